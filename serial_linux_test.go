package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// stdinOf returns what process pid's stdin is (the target of /proc/<pid>/fd/0) and the
// access mode it was opened with (os.O_RDONLY, O_WRONLY or O_RDWR).
func stdinOf(t *testing.T, pid int) (string, int) {
	t.Helper()
	target, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/0")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			return target, int(flags) & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
		}
	}
	t.Fatalf("no flags in fdinfo: %s", b)
	return "", 0
}

// readFIFO reads what is waiting in the FIFO at path without blocking.
func readFIFO(t *testing.T, path string) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return string(out)
		}
	}
}

// TestConsoleInput starts VMs with serial input: Firecracker's stdin is the serial.in FIFO,
// opened for reading and writing, and what ConsoleInput's writers write arrives in it. The
// fake Firecracker does not read its stdin, so the bytes wait there for this test to read.
func TestConsoleInput(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		mgr, _, kernel := fakeSetup(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.BootMode = mode
		spec.SerialInput = true
		m := start(t, mgr, spec)
		fifo := m.Info().RuntimeDir + "/serial.in"
		fi, err := os.Lstat(fifo)
		if err != nil || fi.Mode().Type() != os.ModeNamedPipe || fi.Mode().Perm() != 0o600 {
			t.Fatalf("serial.in: %v, %v", fi.Mode(), err)
		}
		if target, acc := stdinOf(t, m.PID()); target != fifo || acc != os.O_RDWR {
			t.Fatalf("firecracker's stdin is %s (access %d), want %s read-write", target, acc, fifo)
		}
		// Writers come and go; the bytes queue up in the FIFO.
		for _, s := range []string{"root\n", "uname -a\n"} {
			w, err := m.ConsoleInput()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(w, s); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if got := readFIFO(t, fifo); got != "root\nuname -a\n" {
			t.Errorf("the FIFO holds %q", got)
		}
		// state.json records it, for other processes.
		b, _ := os.ReadFile(m.Info().RuntimeDir + "/state.json")
		st, err := rundir.ParseState(b)
		if err != nil {
			t.Fatal(err)
		}
		var recorded MachineSpec
		json.Unmarshal(st.Spec, &recorded)
		if !recorded.SerialInput || st.Paths.SerialIn != fifo {
			t.Errorf("state.json: serial_input %v, serial_in %q", recorded.SerialInput, st.Paths.SerialIn)
		}

		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		if _, err := m.ConsoleInput(); !errors.Is(err, ErrNotRunning) {
			t.Errorf("ConsoleInput after the end: %v, want ErrNotRunning", err)
		}
		if _, err := os.Lstat(fifo); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("serial.in left: %v", err)
		}
	})
}

// TestConsoleInputOff: without SerialInput, stdin is /dev/null and ConsoleInput refuses.
func TestConsoleInputOff(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, guestSpec(kernel, testguest.ModeHalt))
	if target, _ := stdinOf(t, m.PID()); target != os.DevNull {
		t.Errorf("stdin is %s, want %s", target, os.DevNull)
	}
	if _, err := os.Lstat(m.Info().RuntimeDir + "/serial.in"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serial.in exists: %v", err)
	}
	if _, err := m.ConsoleInput(); !errors.Is(err, ErrNoConsoleInput) {
		t.Errorf("ConsoleInput: %v, want ErrNoConsoleInput", err)
	}
}

// TestConsoleInputAttached writes to the serial input of a detached VM from another process.
func TestConsoleInputAttached(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Name, spec.SerialInput = "typed", true
	_, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Detached: true, Exit: true})
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	mgr := newManager(t, root, bin)
	m, err := mgr.Attach(context.Background(), "typed")
	if err != nil {
		t.Fatal(err)
	}
	w, err := m.ConsoleInput()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "hi\n")
	w.Close()
	if got := readFIFO(t, m.Info().RuntimeDir+"/serial.in"); got != "hi\n" {
		t.Errorf("the FIFO holds %q", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

// fifoQueued returns how many bytes wait in the pipe f is an end of.
func fifoQueued(t *testing.T, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	var errno syscall.Errno
	rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	})
	if errno != 0 {
		t.Fatal(errno)
	}
	return int(n)
}

// TestRealConsoleInput shows that the real Firecracker reads the guest's serial input from the
// FIFO: the bytes written leave the pipe (the halt guest never reads its UART; Firecracker
// buffers or drops what the guest does not take).
func TestRealConsoleInput(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		m, con := realVM(t, mode, testguest.ModeHalt, func(s *MachineSpec) { s.SerialInput = true })
		con.waitFor(t, testguest.HaltLine)
		w, err := m.ConsoleInput()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		const sent = 100
		if _, err := w.Write([]byte(strings.Repeat("x", sent))); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(waitLong)
		for fifoQueued(t, w.(*os.File)) == sent {
			if time.Now().After(deadline) {
				t.Fatalf("firecracker read none of the %d bytes from its stdin FIFO", sent)
			}
			time.Sleep(time.Millisecond)
		}
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	})
}
