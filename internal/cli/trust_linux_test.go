package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// stateOf reads a VM's state.json as a generic object.
func stateOf(t *testing.T, vm psEntry) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.RuntimeDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// stop --timeout holds its timeout even when the VM's supervisor is stopped (SIGSTOP) and
// cannot clean up: the VM is stopped, and stop returns, within the timeout and its slack.
func TestStopWithAStoppedSupervisor(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	env.run(t, "run", "-d", "--name", "frozen", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	vm := env.psOne(t, "frozen")
	owner := int(stateOf(t, vm)["owner_pid"].(float64))
	if err := syscall.Kill(owner, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(owner, syscall.SIGCONT) })
	begin := time.Now()
	r := env.run(t, "stop", "--timeout", "1s", "frozen")
	if took := time.Since(begin); took > 1*time.Second+stopSlack+time.Second {
		t.Errorf("stop took %v with --timeout 1s", took)
	}
	if processAlive(vm.PID) {
		t.Errorf("firecracker still runs after stop (%+v)", r)
	}
	syscall.Kill(owner, syscall.SIGCONT)
	if r.code != ExitError || !strings.Contains(r.stderr, "is stopped (SIGSTOP)") {
		t.Errorf("stop: %+v, want it to say the owner has not cleaned up", r)
	}
	// Once it runs again, the supervisor cleans up.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ents, _ := os.ReadDir(filepath.Dir(vm.RuntimeDir)); len(ents) == 0 {
			return
		}
	}
	t.Errorf("%s left after the supervisor resumed", vm.RuntimeDir)
}

// logs reads the VM's own serial log, never a path its state.json names.
func TestLogsIgnoresPathsInState(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("TOP SECRET"), 0o600)
	env.run(t, "run", "-d", "--name", "chatty", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	vm := env.psOne(t, "chatty")
	stPath := filepath.Join(vm.RuntimeDir, "state.json")
	b, _ := os.ReadFile(stPath)
	b = bytes.ReplaceAll(b, []byte(filepath.Join(vm.RuntimeDir, "serial.log")), []byte(secret))
	os.WriteFile(stPath, b, 0o600)
	if r := env.run(t, "logs", "chatty").ok(t); strings.Contains(r.stdout, "SECRET") || !strings.Contains(r.stdout, "smartvm-testguest: ready") {
		t.Errorf("logs printed %q", r.stdout)
	}
	env.run(t, "stop", "chatty").ok(t)
}

// A corrupt state.json shows the VM as unknown; kill and rm -f still remove it, and rm without
// -f says how.
func TestCorruptStateCLI(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	for _, name := range []string{"c1", "c2"} {
		env.run(t, "run", "-d", "--name", name, "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	}
	var vms []psEntry
	for _, vm := range env.ps(t) {
		vms = append(vms, vm)
		os.WriteFile(filepath.Join(vm.RuntimeDir, "state.json"), []byte("{garbage"), 0o600)
	}
	r := env.run(t, "ps").ok(t)
	if !strings.Contains(r.stdout, "unknown") || !strings.Contains(r.stdout, "c1") {
		t.Errorf("ps:\n%s", r.stdout)
	}
	env.run(t, "rm", "c1").fails(t, ExitError, "rm -f")
	env.run(t, "rm", "-f", "c1").ok(t)
	env.run(t, "kill", "c2").ok(t)
	for _, vm := range vms {
		assertGone(t, vm)
	}
}
