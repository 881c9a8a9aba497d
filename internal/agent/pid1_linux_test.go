package agent

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// TestPID1Entrypoint runs an init config's entrypoint as PID 1: it sees the mounts and the
// hostname, its exit code reaches the host's announce socket, and the agent then powers off
// (in a PID namespace, reboot(2) ends its init with SIGHUP).
func TestPID1Entrypoint(t *testing.T) {
	rootfs := makeRootfs(t)
	cfg := InitConfig{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{`while [ ! -e /data/go ]; do sleep 0.02; done; hostname; grep -c ' /dev/pts devpts' /proc/mounts; echo "$GREETING from $PWD as $(id -u)"; exit 3`},
		Env:        []string{"GREETING=hello"},
		WorkingDir: "/data/made", // missing: the agent makes it
		User:       "tester",
		Hostname:   "guest1",
	}
	a, events := startPID1(t, rootfs, cfg)
	if err := os.WriteFile(filepath.Join(rootfs, "data/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h := waitEvent(t, events)
	if h.Event != "exit" || h.Code == nil || *h.Code != 3 {
		t.Fatalf("event %+v, want exit with code 3", h)
	}
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not power off after the entrypoint ended")
	}
	ws := a.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGHUP {
		t.Errorf("agent ended with %v, want killed by SIGHUP (reboot in a PID namespace)", a.cmd.ProcessState)
	}
	out := a.output.String()
	for _, want := range []string{"guest1\n", "1\n", "hello from /data/made as 1000\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("console output lacks %q:\n%s", want, out)
		}
	}
}

// TestPID1MainHostname: the host name the main process request carries (the VM's name) is
// the guest's unless the init config gives one; a bad one is refused.
func TestPID1MainHostname(t *testing.T) {
	for _, c := range []struct{ image, want string }{{"", "vm-1\n"}, {"from-image", "from-image\n"}} {
		a, _ := startPID1(t, makeRootfs(t), InitConfig{Entrypoint: []string{"hostname"}, Hostname: c.image}, "--wait-main")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := a.client.Main(ctx, agentwire.MainStart{Hostname: "bad/name"}, agentwire.ExecIO{}); err == nil || !strings.Contains(err.Error(), `host name "bad/name"`) {
			t.Errorf("a bad host name: %v", err)
		}
		var out bytes.Buffer
		p, err := a.client.Main(ctx, agentwire.MainStart{Hostname: "vm-1"}, agentwire.ExecIO{Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := p.Wait(); err != nil || st.Code != 0 || out.String() != c.want {
			t.Errorf("image host name %q: %+v %v, output %q, want %q", c.image, st, err, out.String(), c.want)
		}
	}
}

// TestPID1KernelWords: as PID 1 the agent runs on with the arguments the kernel passes init
// (command line words it does not know), which it names in a warning.
func TestPID1KernelWords(t *testing.T) {
	rootfs := makeRootfs(t)
	a, _ := startPID1(t, rootfs, InitConfig{Cmd: []string{"true"}}, "--wait-main", "single", "nosuchword")
	if out := a.output.String(); !strings.Contains(out, "ignoring arguments from the kernel command line") || !strings.Contains(out, "nosuchword") {
		t.Errorf("no warning about the kernel's words:\n%s", out)
	}
}

func waitEvent(t *testing.T, events <-chan agentwire.Hello) agentwire.Hello {
	t.Helper()
	select {
	case h := <-events:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no event from the agent on the announce socket")
	}
	return agentwire.Hello{}
}

// TestStaticBinary builds cmd/smartvm-agent without cgo and checks that the result has no
// program interpreter, so it runs in any guest.
func TestStaticBinary(t *testing.T) {
	bin := buildAgent(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("smartvm-agent has a program interpreter: it would need the guest's C library")
		}
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "smartvm-agent ") {
		t.Errorf("smartvm-agent --version: %q, %v", out, err)
	}
	var ee *exec.ExitError
	if err := exec.Command(bin, "--listen", "bogus:x").Run(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("smartvm-agent with a bad address: %v, want exit code 1", err)
	}
}

// buildAgent builds cmd/smartvm-agent as shipped (without cgo) into a temporary directory
// and returns its path. It skips under -short and without the go command.
func buildAgent(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a binary; skipped under -short")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("needs the go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "smartvm-agent")
	cmd := exec.Command("go", "build", "-o", bin, "../../cmd/smartvm-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startPID1 writes cfg to rootfs/init.json, starts the agent as PID 1 with it and extra
// arguments, announcing to a socket whose events it returns, and waits for it to be ready.
// /data is writable by all.
func startPID1(t *testing.T, rootfs string, cfg InitConfig, args ...string) (*nsAgent, <-chan agentwire.Hello) {
	t.Helper()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "init.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(rootfs, "data"), 0o777); err != nil {
		t.Fatal(err)
	}
	events := announceListener(t, filepath.Join(rootfs, "host.sock"))
	a := startNSAgent(t, rootfs, append([]string{"--config", "/init.json", "--announce", "unix:/host.sock"}, args...)...)
	if h := waitEvent(t, events); h.Event != "ready" || !h.PID1 {
		t.Fatalf("first event %+v, want ready from PID 1", h)
	}
	return a, events
}
