package smartvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/agent"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
)

// localAgent runs an agent in this process on a Unix socket and returns a client of it.
func localAgent(t *testing.T) (*Agent, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, agent.Config{Listen: []string{"unix:" + sock}}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	a, err := DialAgent("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := a.Ping(ctx)
		cancel()
		if err == nil {
			return a, sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not answer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAgentCommand(t *testing.T) {
	a, _ := localAgent(t)
	ctx := context.Background()

	home, _ := os.UserHomeDir()
	out, err := a.Command(ctx, "sh", "-c", "echo $X; pwd").Output()
	if err != nil || string(out) != "\n"+home+"\n" {
		t.Errorf("Output: %q, %v; want an empty line and %s", out, err, home)
	}
	cmd := a.Command(ctx, "sh", "-c", "echo $X; pwd; echo oops >&2; exit 5")
	cmd.Env, cmd.Dir = []string{"X=42"}, "/"
	out, err = cmd.CombinedOutput()
	var ee *CommandExitError
	// stdout and stderr are separate pipes in the guest, each read on its own: the order of
	// lines across them is not kept.
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	slices.Sort(lines)
	if !errors.As(err, &ee) || ee.Code != 5 || strings.Join(lines, ",") != "/,42,oops" {
		t.Errorf("CombinedOutput: %q, %v; want exit code 5", out, err)
	}
	err = a.Command(ctx, "no-such-command-here").Run()
	if !errors.As(err, &ee) || ee.Code != 127 || !strings.Contains(ee.Reason, "command not found") {
		t.Errorf("unknown command: %v; want exit code 127 with a reason", err)
	}
	cmd = a.Command(ctx, "cat")
	cmd.Stdin = strings.NewReader("piped")
	if out, err := cmd.Output(); err != nil || string(out) != "piped" {
		t.Errorf("stdin: %q, %v", out, err)
	}
	cmd = a.Command(ctx, "sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if cmd.PID() == 0 {
		t.Error("no pid")
	}
	if err := cmd.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.Signal != syscall.SIGKILL || ee.Code != 137 {
		t.Errorf("killed command: %v", err)
	}
}

func TestAgentCopy(t *testing.T) {
	a, _ := localAgent(t)
	ctx := context.Background()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "d/sub/f"), []byte("content"), 0o640); err != nil {
		t.Fatal(err)
	}
	guest := t.TempDir() // the agent runs on this host: its "guest" paths are ours
	if err := a.CopyTo(ctx, filepath.Join(src, "d"), guest, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	back := t.TempDir()
	if err := a.CopyFrom(ctx, filepath.Join(guest, "d"), filepath.Join(back, "copy"), CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(back, "copy/sub/f")); err != nil || string(b) != "content" {
		t.Errorf("round trip: %q, %v", b, err)
	}
	if _, err := a.Stat(ctx, filepath.Join(guest, "nothing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing path: %v", err)
	}
	if err := a.CopyFrom(ctx, filepath.Join(guest, "nothing"), back, CopyOptions{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CopyFrom of a missing path: %v", err)
	}
}

func TestAgentUnreachable(t *testing.T) {
	if _, err := DialAgent("udp:1.2.3.4:5"); err == nil || !strings.Contains(err.Error(), "unix:PATH or tcp:HOST:PORT") {
		t.Errorf("DialAgent with a bad address: %v", err)
	}
	// Nobody there: fails at once.
	a, err := DialAgent("unix:" + filepath.Join(t.TempDir(), "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Ping(context.Background()); err == nil {
		t.Error("Ping of a missing socket succeeded")
	}
	// A listener that never answers (a guest without an agent, as Firecracker's vsock socket
	// looks): the caller's deadline bounds the wait.
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	silent, _ := DialAgent("unix:" + sock)
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := silent.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Ping of a silent socket: %v, want a deadline error", err)
	}
}

// TestMachineCommand runs commands through a VM's vsock device: the fake Firecracker relays
// the agent's port to an agent running on this host.
func TestMachineCommand(t *testing.T) {
	_, sock := localAgent(t)
	t.Setenv(fakefc.EnvVsockForward, fmt.Sprintf("%d=%s", AgentPort, sock))
	mgr, _, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeVsockEcho)
	spec.Vsock = &VsockSpec{CID: 3}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := m.Command(ctx, "sh", "-c", "echo through vsock").Output()
	if err != nil || string(out) != "through vsock\n" {
		t.Fatalf("Machine.Command: %q, %v", out, err)
	}
	ag := m.Agent()
	defer ag.Close()
	if info, err := ag.Ping(ctx); err != nil || info.Version == "" {
		t.Errorf("Ping: %+v, %v", info, err)
	}

	// Without a vsock device, calls fail at once with ErrNoVsock; without an agent listening,
	// within the caller's deadline.
	plain := start(t, mgr, guestSpec(kernel, testguest.ModeHalt))
	noVsock := plain.Agent()
	defer noVsock.Close()
	if _, err := noVsock.Ping(ctx); !errors.Is(err, ErrNoVsock) {
		t.Errorf("Ping of a VM without vsock: %v, want ErrNoVsock", err)
	}
	t.Setenv(fakefc.EnvVsockForward, "")
	spec.Name = "noagent"
	silent := start(t, mgr, spec)
	noAgent := silent.Agent()
	defer noAgent.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer scancel()
	if _, err := noAgent.Ping(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Ping of a VM without an agent: %v, want a deadline error", err)
	}
}

// TestWaitAgent: an agent announcing itself on a socket (as it does on vsock port
// AgentHostPort) is seen ready and gets the host's clock.
func TestWaitAgent(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "host.sock")
	ln, err := net.Listen("unix", host)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{Listen: []string{"unix:" + filepath.Join(dir, "agent.sock")}, Announce: "unix:" + host})
	}()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	var ready AgentEvent
	err = watchAgentOn(wctx, ln, func(e AgentEvent) bool { ready = e; return e.Kind == "ready" })
	if err != nil || ready.Version == "" {
		t.Fatalf("watchAgentOn: %+v, %v", ready, err)
	}
	// Nobody announcing: the caller's deadline ends the wait.
	ln2, err := net.Listen("unix", filepath.Join(dir, "silent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	if err := watchAgentOn(sctx, ln2, func(AgentEvent) bool { return true }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("watchAgentOn with no agent: %v", err)
	}
}

// serveEvents serves an agent connection over a pipe with serveAgentConn, collecting the
// events it passes on (read them once done has the result), until stop returns true. It
// returns the guest's end.
func serveEvents(stop func(AgentEvent) bool) (guest net.Conn, events *[]AgentEvent, done <-chan bool) {
	host, guest := net.Pipe()
	events = new([]AgentEvent)
	served := make(chan bool, 1)
	go func() {
		served <- serveAgentConn(context.Background(), host, func(e AgentEvent) bool {
			*events = append(*events, e)
			return stop(e)
		})
	}()
	return guest, events, served
}

// TestWatchAgentEvents: each announcement is answered with the clock and passed on, the
// exit code of a PID 1 agent's entrypoint included.
func TestWatchAgentEvents(t *testing.T) {
	guest, events, done := serveEvents(func(e AgentEvent) bool { return e.Kind == "exit" })
	sc := bufio.NewScanner(guest)
	for _, line := range []string{`{"event":"ready","version":"v1","pid1":true}`, `{"event":"exit","code":3}`} {
		if _, err := guest.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		if !sc.Scan() || !strings.Contains(sc.Text(), `"unix_nano":`) {
			t.Fatalf("answer to %s: %q, %v", line, sc.Text(), sc.Err())
		}
	}
	if !<-done {
		t.Error("serveAgentConn did not stop at the exit event")
	}
	want := []AgentEvent{{Kind: "ready", Version: "v1", PID1: true}, {Kind: "exit", ExitCode: 3}}
	if fmt.Sprint(*events) != fmt.Sprint(want) {
		t.Errorf("events %+v, want %+v", *events, want)
	}
}

// mainAgent runs an agent in this process that waits for its main process, running init
// (an OCI image's config), and returns its socket and
// the channel Run's result comes on.
func mainAgent(t *testing.T, init agent.InitConfig, console io.Writer) (string, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{Listen: []string{"unix:" + sock}, MainWait: true, Init: &init, Stdout: console, Stderr: console})
	}()
	t.Cleanup(func() { cancel() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, done
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent does not listen")
		}
	}
}

// TestMachineMainCommand starts a VM's main process through its vsock device (the fake
// Firecracker relays the agent's port to an agent on this host) with overrides and attached
// stdio, and gets its exit code.
func TestMachineMainCommand(t *testing.T) {
	sock, done := mainAgent(t, agent.InitConfig{Entrypoint: []string{"sh", "-c"}, Cmd: []string{"echo image cmd"}, Env: []string{"FROM=image"}}, io.Discard)
	t.Setenv(fakefc.EnvVsockForward, fmt.Sprintf("%d=%s", AgentPort, sock))
	mgr, _, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeVsockEcho)
	spec.AgentMain = true
	if _, err := mgr.Start(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "agent_main") {
		t.Errorf("Start with agent_main and no vsock: %v, want a refusal", err)
	}
	spec.Vsock = &VsockSpec{CID: 3}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	c := m.MainCommand(ctx, `cat; echo "$FROM $ADDED $PWD" >&2; exit 9`)
	if c.Hostname != m.Name() {
		t.Errorf("the main command's host name is %q, want the vm's name %q", c.Hostname, m.Name())
	}
	c.Env, c.Dir = []string{"ADDED=host"}, dir
	c.Stdin = strings.NewReader("from stdin\n")
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	var ee *CommandExitError
	if !errors.As(err, &ee) || ee.Code != 9 || stdout.String() != "from stdin\n" || stderr.String() != "image host "+dir+"\n" {
		t.Errorf("main: %v, stdout %q, stderr %q; want exit code 9", err, stdout.String(), stderr.String())
	}
	var me *agent.MainExitError
	if err := <-done; !errors.As(err, &me) || me.Code != 9 {
		t.Errorf("agent: %v, want the main process's exit code 9", err)
	}
}

// TestMainCommandDetached: a detached main process writes to the guest's console and the
// call returns once it runs; a second start is refused.
func TestMainCommandDetached(t *testing.T) {
	var console syncBuffer
	a, _ := localAgent(t)
	err := a.MainCommand(t.Context()).StartDetached()
	if err == nil || !strings.Contains(err.Error(), AgentMainBootArg) {
		t.Errorf("MainCommand of an agent not waiting for one: %v", err)
	}
	sock, done := mainAgent(t, agent.InitConfig{Entrypoint: []string{"false"}, Cmd: []string{"image", "args"}}, &console)
	b, err := DialAgent("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := b.MainCommand(t.Context(), "-c", "echo to the console $0")
	c.Entrypoint = []string{"sh"}
	if err := c.StartDetached(); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait of a detached main: %v", err)
	}
	if err := <-done; err != nil || string(console.bytes()) != "to the console sh\n" {
		t.Errorf("agent: %v, console %q", err, console.bytes())
	}
	if err := b.Command(t.Context(), "true").StartDetached(); err == nil {
		t.Error("StartDetached of an exec command succeeded")
	}
}

// TestWatchAgentExitBounded: an exit event without an exit code a process can have (0 to
// 255) is not the agent's: the connection is dropped, and the event goes no further.
func TestWatchAgentExitBounded(t *testing.T) {
	for _, line := range []string{`{"event":"exit","code":256}`, `{"event":"exit","code":-1}`, `{"event":"exit"}`, `{"event":"exit","code":99999999999999999999}`} {
		guest, events, done := serveEvents(func(AgentEvent) bool { return true })
		go func() { _, _ = guest.Write([]byte(line + "\n")) }()
		if <-done || len(*events) != 0 {
			t.Errorf("%s: passed on %+v", line, *events)
		}
		if _, err := guest.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: answered instead of dropped", line)
		}
		guest.Close()
	}
}

// TestWatchAgentEventText: the version and kind of an announcement are the guest's text: they
// are passed on cut and with their control characters escaped.
func TestWatchAgentEventText(t *testing.T) {
	guest, events, done := serveEvents(func(AgentEvent) bool { return true })
	line := `{"event":"ready\u001b[2J","version":"v1\r\n` + strings.Repeat("x", 2*agentwire.MaxGuestText) + `"}`
	go func() {
		_, _ = guest.Write([]byte(line + "\n"))
		_, _ = guest.Read(make([]byte, 64))
	}()
	if !<-done || len(*events) != 1 {
		t.Fatalf("events %+v", *events)
	}
	e := (*events)[0]
	if e.Kind != `ready\x1b[2J` || !strings.HasPrefix(e.Version, `v1\x0d\x0axxx`) || len(e.Version) > agentwire.MaxGuestText+3 {
		t.Errorf("event kind %q, version %.20q... of %d bytes", e.Kind, e.Version, len(e.Version))
	}
	guest.Close()
}
