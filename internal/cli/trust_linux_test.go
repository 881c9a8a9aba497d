package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/fakefc"
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
	env.run(t, "run", "-d", "--rm", "--name", "frozen", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	t.Cleanup(func() { env.run(t, "kill", "frozen") }) // if the test stops early
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
	env.run(t, "run", "-d", "--rm", "--name", "chatty", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	t.Cleanup(func() { env.run(t, "kill", "chatty") }) // if the test stops early
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
		env.run(t, "run", "-d", "--rm", "--name", name, "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
		t.Cleanup(func() { env.run(t, "kill", name) }) // if the test stops early
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

// command runs the CLI as a process of its own, with the env's variables.
func (e cliEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e[testSelf], args...)
	cmd.Env = os.Environ()
	for k, v := range e {
		if !strings.HasPrefix(k, "\x00") {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	return cmd
}

// A snapshot interrupted while Firecracker writes it: SIGINT resumes the VM and removes the
// partial snapshot; SIGKILL leaves the VM paused, ps says why, and resume lets it run.
func TestInterruptedSnapshotCLI(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	t.Setenv(fakefc.EnvMode, fakefc.ModeSlowSnapshot)
	env.run(t, "run", "-d", "--rm", "--name", "snappy", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCounter)).ok(t)
	t.Cleanup(func() { env.run(t, "kill", "snappy") }) // if the test stops early
	vm := env.psOne(t, "snappy")
	for i, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		dir := filepath.Join(t.TempDir(), "snap")
		cmd := env.command("snapshot", "snappy", dir)
		var out testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the snapshot has marked the VM and paused it: the fake then takes
		// SlowSnapshotDelay to write it. (Asking the VM's state now would wait for that, as
		// Firecracker's API does.)
		mark := filepath.Join(vm.RuntimeDir, "snapshot.pending")
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(mark); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the snapshot never started: %s", i, out.String())
			}
		}
		time.Sleep(fakefc.SlowSnapshotDelay / 4)
		cmd.Process.Signal(sig)
		cmd.Wait()
		r := env.run(t, "ps").ok(t)
		switch sig {
		case syscall.SIGINT:
			if !strings.Contains(r.stdout, "Running") {
				t.Errorf("after SIGINT the vm is not running:\n%s\n%s", r.stdout, out.String())
			}
			if _, err := os.Stat(filepath.Join(dir, "vm.mem")); err == nil {
				ents, _ := os.ReadDir(dir)
				t.Errorf("after SIGINT the partial snapshot is left: %v\n%s", ents, out.String())
			}
		case syscall.SIGKILL:
			// Firecracker finishes the snapshot nobody waits for any more; until then its
			// API does not answer.
			time.Sleep(fakefc.SlowSnapshotDelay)
			r = env.run(t, "ps").ok(t)
			if !strings.Contains(r.stdout, "by an interrupted snapshot") {
				t.Errorf("after SIGKILL ps says:\n%s", r.stdout)
			}
			env.run(t, "resume", "snappy").ok(t)
			if vm := env.psOne(t, "snappy"); vm.State != "Running" {
				t.Errorf("after resume: %s", vm.State)
			}
			if r := env.run(t, "ps").ok(t); strings.Contains(r.stdout, "interrupted") {
				t.Errorf("the mark outlived the resume:\n%s", r.stdout)
			}
		}
	}
	env.run(t, "stop", "snappy").ok(t)
}
