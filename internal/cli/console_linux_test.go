package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// openPTY opens a pseudo-terminal: the master is the user's side (keys written to it are
// typed, the screen is read from it), the slave the terminal the CLI gets as stdin and
// stdout. Both are closed when the test ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	var n int
	withFD(master, func(fd int) {
		if err = unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err == nil {
			n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		}
	})
	if err != nil {
		t.Fatalf("unlock the pseudo-terminal: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// termios reads the terminal settings of f.
func termios(t *testing.T, f *os.File) unix.Termios {
	t.Helper()
	var tio *unix.Termios
	err := os.ErrClosed
	withFD(f, func(fd int) { tio, err = unix.IoctlGetTermios(fd, unix.TCGETS) })
	if err != nil {
		t.Fatal(err)
	}
	return *tio
}

// screen collects what the CLI writes to the terminal, until the master is closed.
func screen(master *os.File) *testutil.SyncBuffer {
	var b testutil.SyncBuffer
	go func() { _, _ = io.Copy(&b, master) }()
	return &b
}

// waitGuestInput waits until the guest's serial input holds want. The fake Firecracker does
// not read its stdin, the serial.in FIFO in the VM's directory, so what the console forwards
// stays there for the test to read.
func waitGuestInput(t *testing.T, vm psEntry, want string) {
	t.Helper()
	fd, err := syscall.Open(filepath.Join(vm.RuntimeDir, "serial.in"), syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	var got []byte
	buf := make([]byte, 256)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(string(got), want) {
		n, err := syscall.Read(fd, buf)
		if n > 0 {
			got = append(got, buf[:n]...)
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAGAIN) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest got %q, want %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// In a terminal, run puts it in raw mode, so Ctrl-] q stops the VM without Enter; the
// console's lines end in "\r\n"; the terminal's settings are restored afterwards.
func TestForegroundTerminal(t *testing.T) {
	testutil.CheckLeaks(t)
	testForegroundTerminal(t, fakeEnv(t), true)
}

func TestRealForegroundTerminal(t *testing.T) {
	testutil.CheckLeaks(t)
	testForegroundTerminal(t, vmEnv(t, testutil.FirecrackerBin(t)), false)
}

// testForegroundTerminal runs a VM in the foreground on a pseudo-terminal. With the fake
// Firecracker (fake), which leaves its serial input unread, it also checks what the guest got.
func testForegroundTerminal(t *testing.T, env cliEnv, fake bool) {
	master, tty := openPTY(t)
	before := termios(t, tty)
	shown := screen(master)
	var errOut testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		a := &app{stdin: tty, stdout: tty, stderr: &errOut, lookupEnv: env.lookup, self: env[testSelf]}
		done <- a.run(t.Context(), []string{"run", "--name", "tty", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)})
	}()
	waitOutput(t, shown, testguest.ReadyLine+"\r\n")
	vm := env.psOne(t, "tty")
	if raw := termios(t, tty); raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("the terminal is not in raw mode while the console runs: lflag %#x", raw.Lflag)
	}
	if want := "vm tty is running; Ctrl-] q stops it"; !strings.Contains(errOut.String(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, errOut.String())
	}
	// Keys reach the guest as typed: no echo, no line editing, Ctrl-C is a byte.
	if _, err := master.Write([]byte("ls\x7f\x03")); err != nil {
		t.Fatal(err)
	}
	if fake {
		waitGuestInput(t, vm, "ls\x7f\x03")
	}
	// Ctrl-] and q in separate reads, and no Enter: only a raw terminal passes them on.
	if _, err := master.Write([]byte{escapeByte}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := master.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("run exited %d after the escape:\n%s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not end after Ctrl-] q")
	}
	if after := termios(t, tty); after != before {
		t.Errorf("the terminal's settings were not restored:\nbefore %+v\nafter  %+v", before, after)
	}
	assertGone(t, vm)
}
