package testguest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testutil"
)

// bootWait bounds each wait for guest output or exit; the guest itself needs well under a second.
const bootWait = 20 * time.Second

// serial collects a guest's serial output (Firecracker's stdout) and when its first byte came.
type serial struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	first   time.Time
	changed chan struct{} // closed and replaced on every write
}

func newSerial() *serial { return &serial{changed: make(chan struct{})} }

func (s *serial) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first.IsZero() && len(p) > 0 {
		s.first = time.Now()
	}
	s.buf.Write(p)
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

func (s *serial) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits until cond holds for the output so far, or the VM exits, or bootWait passes.
func (s *serial) waitFor(t *testing.T, vm *fcVM, what string, cond func(string) bool) {
	t.Helper()
	deadline := time.After(bootWait)
	for {
		s.mu.Lock()
		out, changed := s.buf.String(), s.changed
		s.mu.Unlock()
		if cond(out) {
			return
		}
		select {
		case <-changed:
		case <-vm.done:
			if out := s.String(); cond(out) {
				return
			}
			t.Fatalf("firecracker exited (%v) before %s; serial:\n%s\n%s", vm.err, what, s.String(), vm.logs())
		case <-deadline:
			t.Fatalf("no %s within %v; serial:\n%s\n%s", what, bootWait, s.String(), vm.logs())
		}
	}
}

// fcVM is one Firecracker process booted with --config-file.
type fcVM struct {
	cmd     *exec.Cmd
	sock    string
	logPath string
	stderr  bytes.Buffer
	serial  *serial
	started time.Time
	done    chan struct{} // closed when the process has exited and err is set
	err     error
}

// bootGuest writes the guest into a temporary directory and boots it under the real Firecracker
// bin with bootArgs, 1 vCPU and 128 MiB. The process is killed when the test ends.
func bootGuest(t testing.TB, bin, bootArgs string) *fcVM {
	t.Helper()
	return bootGuestIn(t, t.TempDir(), bin, bootArgs, nil)
}

// bootGuestVsock is bootGuest with a vsock device (guest CID 3) whose socket it returns.
func bootGuestVsock(t testing.TB, bin, bootArgs string) (*fcVM, string) {
	t.Helper()
	dir := t.TempDir()
	uds := filepath.Join(dir, "v.sock")
	return bootGuestIn(t, dir, bin, bootArgs, map[string]any{"guest_cid": 3, "uds_path": uds}), uds
}

// bootGuestIn boots the guest from files in dir, with the vsock device configured by vsock
// (none when nil).
func bootGuestIn(t testing.TB, dir, bin, bootArgs string, vsock map[string]any) *fcVM {
	t.Helper()
	kernel := filepath.Join(dir, "vmlinux")
	if err := Write(kernel); err != nil {
		t.Fatal(err)
	}
	config := map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel, "boot_args": bootArgs},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 128},
	}
	if vsock != nil {
		config["vsock"] = vsock
	}
	cfg, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.json")
	vm := &fcVM{sock: filepath.Join(dir, "api.sock"), logPath: filepath.Join(dir, "firecracker.log"), serial: newSerial(), done: make(chan struct{})}
	for p, data := range map[string][]byte{cfgPath: cfg, vm.logPath: nil} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	vm.cmd = exec.Command(bin, "--api-sock", vm.sock, "--config-file", cfgPath, "--log-path", vm.logPath, "--level", "Info")
	vm.cmd.Stdout = vm.serial
	vm.cmd.Stderr = &vm.stderr
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		vm.err = vm.cmd.Wait()
		close(vm.done)
	}()
	t.Cleanup(func() {
		vm.cmd.Process.Kill()
		<-vm.done
	})
	return vm
}

func (vm *fcVM) logs() string {
	log, _ := os.ReadFile(vm.logPath)
	select {
	case <-vm.done:
		return fmt.Sprintf("stderr:\n%s\nlog:\n%s", vm.stderr.String(), log)
	default:
		return fmt.Sprintf("log:\n%s", log)
	}
}

// waitExit waits for Firecracker to exit and checks that it exited with status 0.
func (vm *fcVM) waitExit(t *testing.T) {
	t.Helper()
	select {
	case <-vm.done:
	case <-time.After(bootWait):
		t.Fatalf("firecracker still running after %v; serial:\n%s\n%s", bootWait, vm.serial.String(), vm.logs())
	}
	if vm.err != nil {
		t.Fatalf("firecracker: %v; serial:\n%s\n%s", vm.err, vm.serial.String(), vm.logs())
	}
}

// ctrlAltDel sends SendCtrlAltDel over the API socket, retrying while the socket is not yet
// listening.
func (vm *fcVM) ctrlAltDel(t *testing.T) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", vm.sock)
		},
	}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(bootWait)
	for {
		req, err := http.NewRequest(http.MethodPut, "http://localhost/actions", strings.NewReader(`{"action_type":"SendCtrlAltDel"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			body := new(bytes.Buffer)
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("SendCtrlAltDel: %s: %s", resp.Status, body)
			}
			return
		}
		if time.Now().After(deadline) || !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("SendCtrlAltDel: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasLine(line string) func(string) bool {
	return func(out string) bool { return strings.Contains(out, line+"\n") }
}

func TestRealHello(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	for name, args := range map[string]string{
		"explicit": BootArgs(ModeHello),
		"default":  BaseBootArgs + " xsmartvm.test=halt",
	} {
		t.Run(name, func(t *testing.T) {
			vm := bootGuest(t, bin, args)
			vm.waitExit(t)
			if out := vm.serial.String(); out != HelloLine+"\n" {
				t.Fatalf("serial %q, want %q", out, HelloLine+"\n")
			}
			t.Logf("exec to first serial byte: %v", vm.serial.first.Sub(vm.started))
		})
	}
}

func TestRealUnknownMode(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm := bootGuest(t, bin, BootArgs("bogus"))
	vm.waitExit(t)
	if out := vm.serial.String(); out != UnknownModeLine+"\n" {
		t.Fatalf("serial %q, want %q", out, UnknownModeLine+"\n")
	}
}

func TestRealHalt(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm := bootGuest(t, bin, BootArgs(ModeHalt))
	vm.serial.waitFor(t, vm, "halt line", hasLine(HaltLine))
	vm.ctrlAltDel(t) // interrupts are off: the guest never sees it
	select {
	case <-vm.done:
		t.Fatalf("halted guest exited (%v); serial:\n%s\n%s", vm.err, vm.serial.String(), vm.logs())
	case <-time.After(time.Second):
	}
	if out := vm.serial.String(); out != HaltLine+"\n" {
		t.Fatalf("serial %q, want %q", out, HaltLine+"\n")
	}
}

func TestRealCounter(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm := bootGuest(t, bin, BootArgs(ModeCounter))
	vm.serial.waitFor(t, vm, "the first tick", hasLine(TickLine(0)))
	start := time.Now()
	vm.serial.waitFor(t, vm, "ten ticks", hasLine(TickLine(10)))
	t.Logf("ticks every %v", time.Since(start)/10)
	vm.ctrlAltDel(t)
	vm.waitExit(t)
	lines := strings.Split(strings.TrimSuffix(vm.serial.String(), "\n"), "\n")
	for i, l := range lines {
		if n, ok := ParseTick(l); !ok || n != uint64(i) {
			t.Fatalf("line %d is %q, want %q; serial:\n%s", i, l, TickLine(uint64(i)), vm.serial.String())
		}
	}
	t.Logf("%d ticks before Ctrl-Alt-Del took effect", len(lines))
}

func TestRealCAD(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm := bootGuest(t, bin, BootArgs(ModeCAD))
	vm.serial.waitFor(t, vm, "ready line", hasLine(ReadyLine))
	vm.ctrlAltDel(t)
	vm.waitExit(t)
	if out := vm.serial.String(); out != ReadyLine+"\n" {
		t.Fatalf("serial %q, want %q", out, ReadyLine+"\n")
	}
}

// vsockConnect connects to port in the guest through Firecracker's vsock socket uds and
// returns the connection once the guest has accepted, or nil when Firecracker closed it
// (nothing listens on the port).
func vsockConnect(t *testing.T, uds string, port int) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(bootWait))
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		t.Fatal(err)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			c.Close()
			if len(line) == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				return nil
			}
			t.Fatalf("read the answer to CONNECT %d: %v (after %q)", port, err, line)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		t.Fatalf("answer to CONNECT %d: %q", port, line)
	}
	return c
}

// echoes checks that c sends back msg, written while it reads.
func echoes(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		werr <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo of %d bytes: %v", len(msg), err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo differs from the %d bytes sent", len(msg))
	}
}

// TestRealVsockEcho boots the vsock-echo guest and talks to it through Firecracker's hybrid
// vsock socket, with no library code in between: host-initiated connections to port 52 echo
// (one and several at once, small and larger than the guest's buffers and credit), a port
// nobody listens on is closed, and the guest calls the host's uds_52.
func TestRealVsockEcho(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm, uds := bootGuestVsock(t, bin, BootArgs(ModeVsockEcho))
	vm.serial.waitFor(t, vm, "vsock ready line", hasLine(VsockReadyLine))
	t.Logf("exec to vsock ready: %v", time.Since(vm.started))

	t0 := time.Now()
	c := vsockConnect(t, uds, VsockEchoPort)
	if c == nil {
		t.Fatalf("Firecracker closed CONNECT %d; log:\n%s", VsockEchoPort, vm.logs())
	}
	defer c.Close()
	t.Logf("connect: %v", time.Since(t0))
	t0 = time.Now()
	echoes(t, c, []byte("hello, vsock\n"))
	t.Logf("echo of 13 bytes: %v", time.Since(t0))
	c2 := vsockConnect(t, uds, VsockEchoPort)
	if c2 == nil {
		t.Fatal("second connection closed")
	}
	defer c2.Close()
	echoes(t, c2, []byte("second"))
	big := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB: many packets, credit updates
	t0 = time.Now()
	echoes(t, c, big)
	t.Logf("echo of %d bytes: %v", len(big), time.Since(t0))
	echoes(t, c2, []byte("second again"))

	if c := vsockConnect(t, uds, VsockEchoPort+1); c != nil {
		c.Close()
		t.Fatalf("CONNECT %d (nobody listens) was accepted", VsockEchoPort+1)
	}

	// The guest calls the host on port 52 (every 50 ms while nobody listens).
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, VsockEchoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(bootWait))
	call, err := ln.Accept()
	if err != nil {
		t.Fatalf("no call from the guest: %v; log:\n%s", err, vm.logs())
	}
	call.SetDeadline(time.Now().Add(bootWait))
	echoes(t, call, []byte("calling back"))
	call.Close()
	// Once the call ends, the guest calls again.
	call, err = ln.Accept()
	if err != nil {
		t.Fatalf("no second call from the guest: %v", err)
	}
	call.SetDeadline(time.Now().Add(bootWait))
	echoes(t, call, []byte("again"))
	call.Close()

	vm.ctrlAltDel(t)
	vm.waitExit(t)
}

// TestRealVsockNoDevice boots the vsock-echo guest without a vsock device: it says so and
// resets.
func TestRealVsockNoDevice(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	vm := bootGuest(t, bin, BootArgs(ModeVsockEcho))
	vm.waitExit(t)
	if out := vm.serial.String(); out != NoVsockLine+"\n" {
		t.Fatalf("serial %q, want %q", out, NoVsockLine+"\n")
	}
}

// BenchmarkRealHelloFirstByte measures the time from exec of Firecracker (config-file boot) to
// the guest's first serial byte, and to Firecracker's exit after the guest resets.
func BenchmarkRealHelloFirstByte(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	var first, exit time.Duration
	for b.Loop() {
		vm := bootGuest(b, bin, BootArgs(ModeHello))
		<-vm.done
		if vm.err != nil || vm.serial.String() != HelloLine+"\n" {
			b.Fatalf("firecracker: %v; serial %q\n%s", vm.err, vm.serial.String(), vm.logs())
		}
		first += vm.serial.first.Sub(vm.started)
		exit += time.Since(vm.started)
	}
	b.ReportMetric(float64(first.Nanoseconds())/float64(b.N), "ns-to-first-byte/op")
	b.ReportMetric(float64(exit.Nanoseconds())/float64(b.N), "ns-to-exit/op")
}

// BenchmarkRealVsockEcho measures a 64-byte round trip through Firecracker's hybrid vsock to
// the vsock-echo guest (host socket → guest → host socket) on one connection.
func BenchmarkRealVsockEcho(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	vm, uds := bootGuestVsock(b, bin, BootArgs(ModeVsockEcho))
	deadline := time.Now().Add(bootWait)
	for !strings.Contains(vm.serial.String(), VsockReadyLine+"\n") {
		if time.Now().After(deadline) {
			b.Fatalf("no vsock ready line; serial %q\n%s", vm.serial.String(), vm.logs())
		}
		time.Sleep(time.Millisecond)
	}
	c, err := net.Dial("unix", uds)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "CONNECT 52\n"); err != nil {
		b.Fatal(err)
	}
	var line []byte
	one := make([]byte, 1)
	for len(line) == 0 || line[len(line)-1] != '\n' {
		if _, err := c.Read(one); err != nil {
			b.Fatalf("answer to CONNECT: %v (after %q)", err, line)
		}
		line = append(line, one[0])
	}
	msg, got := bytes.Repeat([]byte("x"), 64), make([]byte, 64)
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
	}
}
