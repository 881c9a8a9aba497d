package testguest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := Write(kernel); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel, "boot_args": bootArgs},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 128},
	})
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
