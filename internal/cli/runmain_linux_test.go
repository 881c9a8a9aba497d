package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	return mainAgentConfig(t, agent.Config{Init: &init}, nil)
}

// mainAgentConfig is mainAgent with more of the agent's configuration, and a proxy between
// the fake Firecracker and the agent when proxy is not nil.
func mainAgentConfig(t *testing.T, cfg agent.Config, proxy *dropProxy) (*testutil.SyncBuffer, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	console := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg.Listen, cfg.MainWait, cfg.Stdout, cfg.Stderr = []string{"unix:" + sock}, true, console, console
	go func() { done <- agent.Run(ctx, cfg) }()
	t.Cleanup(cancel)
	waitAgentListens(t, sock)
	if proxy != nil {
		sock = proxy.start(t, sock)
	}
	t.Setenv(fakefc.EnvVsockForward, fmt.Sprintf("%d=%s", smartvm.AgentPort, sock))
	return console, done
}

// dropProxy relays connections to a socket until drop breaks them, as a snapshot's vsock
// reset does.
type dropProxy struct {
	mu    sync.Mutex
	conns []net.Conn
}

// start relays a new socket to target and returns the new socket's path.
func (p *dropProxy) start(t *testing.T, target string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); p.drop() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return path
}

func (p *dropProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
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
	env.run(t, "run", "-d", "--rm", "--name", "positional", manifest).ok(t)
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
	env.run(t, "run", "-d", "--rm", "--name", "bg", "-f", agentMainSpec(t), "--", "echo in the background; exit 4").ok(t)
	defer waitEmpty(t, env)
	defer env.run(t, "kill", "bg")
	if code := mainExit(t, done); code != 4 || console.String() != "in the background\n" {
		t.Errorf("agent: exit code %d, console %q", code, console.String())
	}
}

// TestRunMainDetachedExitCode: a detached VM kept as exited records the exit code the agent
// reported for its main process to the supervisor: inspect and ps -a show it.
func TestRunMainDetachedExitCode(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	announce := "unix:" + filepath.Join(env[envRuntimeDir], "vms", "bg", "vsock.sock_"+fmt.Sprint(smartvm.AgentHostPort))
	init := agent.InitConfig{Entrypoint: []string{"sh", "-c"}}
	_, done := mainAgentConfig(t, agent.Config{Init: &init, Announce: announce}, nil)
	env.run(t, "run", "-d", "--name", "bg", "-f", agentMainSpec(t), "--", "exit 4").ok(t)
	if code := mainExit(t, done); code != 4 {
		t.Fatalf("agent: exit code %d, want 4", code)
	}
	env.run(t, "stop", "bg").ok(t) // the fake guest does not power off
	v := waitExited(t, env, "bg")
	if v.Exit.MainExitCode == nil || *v.Exit.MainExitCode != 4 {
		t.Errorf("ps -a: the exited vm lacks its main process's exit code 4: %+v", *v.Exit)
	}
	if r := env.run(t, "ps", "-a").ok(t); !strings.Contains(r.stdout, "exited (4) ") {
		t.Errorf("ps -a table:\n%s", r.stdout)
	}
	if r := env.run(t, "inspect", "bg").ok(t); !strings.Contains(r.stdout, `"main_exit_code": 4`) {
		t.Errorf("inspect:\n%s", r.stdout)
	}
	env.run(t, "rm", "bg").ok(t)
	waitEmpty(t, env)
}

// TestRunMainConsole: --console shows the serial console, the main process writes there, and
// its exit code, which the agent reports on the host port, is run's.
func TestRunMainConsole(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	announce := "unix:" + filepath.Join(env[envRuntimeDir], "vms", "cons", "vsock.sock_"+fmt.Sprint(smartvm.AgentHostPort))
	init := agent.InitConfig{Entrypoint: []string{"sh", "-c"}, Cmd: []string{"echo to the console; exit 5"}}
	console, done := mainAgentConfig(t, agent.Config{Init: &init, Announce: announce}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		mainExit(t, done)
		cancel() // the fake guest does not power off: stop it as ^C would
	}()
	r := env.runCtx(t, ctx, "run", "--console", "--name", "cons", "-f", agentMainSpec(t))
	if r.code != 5 || !strings.Contains(r.stdout, testguest.VsockReadyLine) || console.String() != "to the console\n" {
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

// TestRunMainCallBreaks: when the call to the main process breaks while the VM runs (a
// snapshot resets vsock connections), run says so, and its exit code comes from the agent's
// report on the host port.
func TestRunMainCallBreaks(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	flag := filepath.Join(t.TempDir(), "go")
	proxy := &dropProxy{}
	announce := "unix:" + filepath.Join(env[envRuntimeDir], "vms", "lost", "vsock.sock_"+fmt.Sprint(smartvm.AgentHostPort))
	init := agent.InitConfig{Entrypoint: []string{"sh", "-c"}, Cmd: []string{`echo before; while [ ! -e "$FLAG" ]; do sleep 0.02; done; echo after; exit 6`}, Env: []string{"FLAG=" + flag}}
	console, done := mainAgentConfig(t, agent.Config{Init: &init, Announce: announce}, proxy)
	var out, errOut testutil.SyncBuffer
	res := make(chan result, 1)
	go func() {
		res <- env.runIO(t.Context(), strings.NewReader(""), &out, &errOut, "run", "--name", "lost", "-f", agentMainSpec(t))
	}()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "before\n"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no output from the main process: stdout %q, stderr %q", out.String(), errOut.String())
		}
	}
	proxy.drop()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(errOut.String(), "lost the main process's stdio"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("run does not say the call broke: stderr %q", errOut.String())
		}
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.code != 6 || strings.Contains(r.stdout, "after") {
		t.Errorf("run: code %d, stdout %q, stderr %q; want 6, and no output after the break", r.code, r.stdout, r.stderr)
	}
	if code := mainExit(t, done); code != 6 || console.String() != "after\n" {
		t.Errorf("agent: exit code %d, console %q", code, console.String())
	}
}

// TestRunMainStartFailsKeep: a main process that fails to start leaves the VM's record by
// one rule, in the foreground and detached: --rm=false (a detached run's default) keeps it
// as exited, --rm removes it.
func TestRunMainStartFailsKeep(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		keep bool
	}{
		{"foreground-keep", []string{"--rm=false"}, true},
		{"foreground-rm", []string{"--rm"}, false},
		{"detached-keep", []string{"-d"}, true},
		{"detached-keep-explicit", []string{"-d", "--rm=false"}, true},
		{"detached-rm", []string{"-d", "--rm"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			_, done := mainAgent(t, agent.InitConfig{}) // nothing to run: the main process cannot start
			env := fakeEnv(t)
			r := env.run(t, append(append([]string{"run", "--name", "nostart"}, tc.args...), "-f", agentMainSpec(t))...)
			if r.code == 0 || !strings.Contains(r.stderr, "give one after --") {
				t.Errorf("run: code %d, stderr %q; want the main process's failure", r.code, r.stderr)
			}
			mainExit(t, done)
			if tc.keep && tc.args[0] == "-d" && !strings.Contains(r.stderr, "kept as exited: 'smartvm logs nostart' shows its console, 'smartvm rm nostart' removes it") {
				t.Errorf("run -d: stderr %q does not say the vm is kept", r.stderr)
			}
			if !tc.keep {
				waitEmpty(t, env)
				if vms := env.psAll(t); len(vms) != 0 {
					t.Errorf("ps -a lists %+v, want the vm removed", vms)
				}
				return
			}
			waitExited(t, env, "nostart")
			env.run(t, "rm", "nostart").ok(t)
			waitEmpty(t, env)
		})
	}
}
