package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/internal/agent"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// mainAgent runs an agent in this process that waits for its main process (as an OCI
// image's init does), with init as the image's config, and makes the fake Firecracker relay
// the agent's vsock port to it. It returns the agent's console and Run's result.
func mainAgent(t *testing.T, init agent.InitConfig) (*testutil.SyncBuffer, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	console := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{Listen: []string{"unix:" + sock}, MainWait: true, Init: &init, Stdout: console, Stderr: console})
	}()
	t.Cleanup(cancel)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent does not listen")
		}
	}
	t.Setenv(fakefc.EnvVsockForward, fmt.Sprintf("%d=%s", smartvm.AgentPort, sock))
	return console, done
}

// agentMainSpec writes a spec file for a VM whose init is the agent (agent_main), booting the
// test guest (which keeps the vsock device up until Ctrl-Alt-Del).
func agentMainSpec(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	spec := smartvm.MachineSpec{Kernel: kernel, BootArgs: bootArgs(testguest.ModeVsockEcho), MemoryMiB: 32, AgentMain: true}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// mainExit is the main process's exit code as the agent's Run reports it.
func mainExit(t *testing.T, done <-chan error) int {
	t.Helper()
	select {
	case err := <-done:
		var me *agent.MainExitError
		if errors.As(err, &me) {
			return me.Code
		}
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatal("the agent's main process did not end")
	}
	return -1
}

// TestRunMainAttached: run attaches the main process's stdio (not the console), applies -e,
// -w, -- CMD and -i, exits with its exit code and removes the VM.
func TestRunMainAttached(t *testing.T) {
	testutil.CheckLeaks(t)
	console, done := mainAgent(t, agent.InitConfig{Entrypoint: []string{"sh", "-c"}, Cmd: []string{"echo image cmd"}, Env: []string{"FROM=image", "MODE=image"}})
	env := fakeEnv(t)
	env["FROM_HOST"] = "host value"
	spec := agentMainSpec(t)
	dir := t.TempDir()
	var out, errOut testutil.SyncBuffer
	r := env.runIO(t.Context(), strings.NewReader("typed\n"), &out, &errOut, "run", "-i", "-e", "MODE=flag", "-e", "FROM_HOST", "-e", "NOT_SET_HERE", "-w", dir, "-f", spec,
		"--", `cat; echo "$FROM $MODE $FROM_HOST ${NOT_SET_HERE-unset} $PWD" >&2; exit 9`)
	if r.code != 9 || r.stdout != "typed\n" || !strings.Contains(r.stderr, "image flag host value unset "+dir+"\n") {
		t.Errorf("run: code %d, stdout %q, stderr %q; want 9, the main process's output", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, testguest.VsockReadyLine) {
		t.Errorf("stdout has the serial console's output: %q", r.stdout)
	}
	if code := mainExit(t, done); code != 9 || console.String() != "" {
		t.Errorf("agent: exit code %d, console %q", code, console.String())
	}
	if vms := env.ps(t); len(vms) != 0 {
		t.Errorf("the VM is left after run: %+v", vms)
	}
}

// TestRunMainEntrypoint: --entrypoint replaces the image's and drops its Cmd; IMAGE is
// positional and what follows it is the command.
func TestRunMainEntrypoint(t *testing.T) {
	_, done := mainAgent(t, agent.InitConfig{Entrypoint: []string{"false"}, Cmd: []string{"image-arg"}})
	env := fakeEnv(t)
	r := env.run(t, "run", "--entrypoint", "echo", "-f", agentMainSpec(t), "--", "from", "cmd")
	if r.code != 0 || r.stdout != "from cmd\n" {
		t.Errorf("run --entrypoint: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	mainExit(t, done)
}

// TestRunImageArgument: IMAGE may come as an argument instead of --image.
func TestRunImageArgument(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	manifest := writeGuestManifest(t, testguest.ModeHalt)
	env.run(t, "run", "-d", "--name", "positional", manifest).ok(t)
	defer waitEmpty(t, env)
	defer env.run(t, "kill", "positional")
	env.psOne(t, "positional")
}

// TestRunMainNoCommand: an image with nothing to run, and no CMD: run says what to do and
// exits 127.
func TestRunMainNoCommand(t *testing.T) {
	_, done := mainAgent(t, agent.InitConfig{})
	env := fakeEnv(t)
	env.run(t, "run", "-f", agentMainSpec(t)).fails(t, 127, "give one after --")
	if code := mainExit(t, done); code != 127 {
		t.Errorf("agent: exit code %d, want 127", code)
	}
}

// TestRunMainDetached: run -d starts the main process with the serial console as its stdio.
func TestRunMainDetached(t *testing.T) {
	testutil.CheckLeaks(t)
	console, done := mainAgent(t, agent.InitConfig{Entrypoint: []string{"sh", "-c"}})
	env := fakeEnv(t)
	env.run(t, "run", "-d", "--name", "bg", "-f", agentMainSpec(t), "--", "echo in the background; exit 4").ok(t)
	defer waitEmpty(t, env)
	defer env.run(t, "kill", "bg")
	if code := mainExit(t, done); code != 4 || console.String() != "in the background\n" {
		t.Errorf("agent: exit code %d, console %q", code, console.String())
	}
}

// TestRunMainConsole: --console shows the serial console, and the main process writes there.
func TestRunMainConsole(t *testing.T) {
	testutil.CheckLeaks(t)
	console, done := mainAgent(t, agent.InitConfig{Cmd: []string{"echo", "to the console"}})
	env := fakeEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		mainExit(t, done)
		cancel() // the fake guest does not power off: stop it as ^C would
	}()
	r := env.runCtx(t, ctx, "run", "--console", "-f", agentMainSpec(t))
	if r.code != 0 || !strings.Contains(r.stdout, testguest.VsockReadyLine) || console.String() != "to the console\n" {
		t.Errorf("run --console: code %d, stdout %q, stderr %q, agent console %q", r.code, r.stdout, r.stderr, console.String())
	}
}

// TestRunMainUsage: the main process's flags need an image whose init is the agent, and the
// positional arguments are checked.
func TestRunMainUsage(t *testing.T) {
	env := fakeEnv(t)
	for _, args := range [][]string{
		{"run", "-e", "A=1", "--image", "hello"},
		{"run", "--image", "hello", "--", "echo"},
		{"run", "hello", "echo", "hi"},
		{"run", "-t", "hello"},
	} {
		env.run(t, args...).fails(t, ExitUsage, "init is smartvm-agent")
	}
	env.run(t, "run", "--image", "hello", "lts").fails(t, ExitUsage, "IMAGE or --image, not both")
	env.run(t, "run", "lts", "--", "x").fails(t, ExitUsage, "init is smartvm-agent")
	env.run(t, "run", "-d", "-t", "-f", agentMainSpec(t)).fails(t, ExitUsage, "serial console")
	env.run(t, "run", "-e", "=x", "-f", agentMainSpec(t)).fails(t, ExitUsage, "want K=V or K")
}
