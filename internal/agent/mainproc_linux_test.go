package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestInitConfigOverrides(t *testing.T) {
	t.Parallel()
	base := InitConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"serve", "--port=80"}, Env: []string{"A=1", "B=2"}, WorkingDir: "/app", User: "app"}
	empty := []string{}
	for _, tc := range []struct {
		name string
		req  agentwire.MainStart
		want agentwire.ExecStart
	}{
		{"none", agentwire.MainStart{}, agentwire.ExecStart{Args: []string{"/entry", "serve", "--port=80"}, Env: []string{"A=1", "B=2"}, Dir: "/app", User: "app"}},
		{"cmd", agentwire.MainStart{Cmd: []string{"version"}}, agentwire.ExecStart{Args: []string{"/entry", "version"}, Env: []string{"A=1", "B=2"}, Dir: "/app", User: "app"}},
		{"entrypoint drops cmd", agentwire.MainStart{Entrypoint: &[]string{"sh"}}, agentwire.ExecStart{Args: []string{"sh"}, Env: []string{"A=1", "B=2"}, Dir: "/app", User: "app"}},
		{"entrypoint and cmd", agentwire.MainStart{Entrypoint: &[]string{"sh"}, Cmd: []string{"-c", "true"}}, agentwire.ExecStart{Args: []string{"sh", "-c", "true"}, Env: []string{"A=1", "B=2"}, Dir: "/app", User: "app"}},
		{"cleared entrypoint", agentwire.MainStart{Entrypoint: &empty, Cmd: []string{"ls"}}, agentwire.ExecStart{Args: []string{"ls"}, Env: []string{"A=1", "B=2"}, Dir: "/app", User: "app"}},
		{"env dir user tty", agentwire.MainStart{Env: []string{"B=3"}, Dir: "/", User: "0:0", TTY: true, Rows: 5, Cols: 6, Stdin: true},
			agentwire.ExecStart{Args: []string{"/entry", "serve", "--port=80"}, Env: []string{"A=1", "B=2", "B=3"}, Dir: "/", User: "0:0", TTY: true, Rows: 5, Cols: 6, Stdin: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := base.execStart(&tc.req)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
	if !reflect.DeepEqual(base.Cmd, []string{"serve", "--port=80"}) || len(base.Env) != 2 {
		t.Errorf("the overrides changed the init config: %+v", base)
	}
}

func TestMainStartBounds(t *testing.T) {
	t.Parallel()
	many := make([]string, agentwire.MaxMainEnv+1)
	for i := range many {
		many[i] = "K=V"
	}
	long := strings.Repeat("x", agentwire.MaxMainString+1)
	chunk := strings.Repeat("y", agentwire.MaxMainString-10)
	var big []string
	for range agentwire.MaxMainTotal/len(chunk) + 1 {
		big = append(big, chunk)
	}
	for _, tc := range []struct {
		name string
		req  agentwire.MainStart
		want string
	}{
		{"env without =", agentwire.MainStart{Env: []string{"JUSTKEY"}}, "want KEY=VALUE"},
		{"env with empty key", agentwire.MainStart{Env: []string{"=v"}}, "want KEY=VALUE"},
		{"too many env", agentwire.MainStart{Env: many}, "at most 4096"},
		{"too many args", agentwire.MainStart{Cmd: many}, "at most 4096"},
		{"long arg", agentwire.MainStart{Cmd: []string{long}}, "bytes long"},
		{"NUL", agentwire.MainStart{Dir: "/a\x00b"}, "NUL"},
		{"total", agentwire.MainStart{Cmd: big}, "at most 1048576"},
		{"detach with stdin", agentwire.MainStart{Detach: true, Stdin: true}, "detached"},
		{"host name with a slash", agentwire.MainStart{Hostname: "a/b"}, `host name "a/b"`},
		{"host name starting with -", agentwire.MainStart{Hostname: "-a"}, "starting with a letter or digit"},
		{"long host name", agentwire.MainStart{Hostname: strings.Repeat("h", agentwire.MaxHostname+1)}, "at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	ok := agentwire.MainStart{Cmd: []string{"x"}, Env: []string{"A=", "B=c=d"}, Dir: "/", User: "1:1", Hostname: "web-1.example"}
	if err := ok.Check(); err != nil {
		t.Errorf("Check of a good request: %v", err)
	}
}

// mainAgent is an agent run in this process with MainWait.
type mainAgent struct {
	client  *agentwire.Client
	console *testutil.SyncBuffer
	done    chan error
	dir     string
}

// startMainAgent runs an agent in this process that waits for a Main call to run init.
func startMainAgent(t *testing.T, init InitConfig, wait bool) *mainAgent {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	a := &mainAgent{console: &testutil.SyncBuffer{}, done: make(chan error, 1), dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Listen: []string{"unix:" + sock}, MainWait: wait, Init: &init, Stdout: a.console, Stderr: a.console}
	go func() { a.done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			t.Error("the agent did not end")
		}
	})
	dial, err := agentwire.ParseAddr("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	a.client = agentwire.NewClient(dial)
	t.Cleanup(func() { a.client.Close() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := a.client.Health(ctx)
		cancel()
		if err == nil {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not answer: %v", err)
		}
	}
}

// result waits for Run to end and returns the main process's exit code.
func (a *mainAgent) result(t *testing.T) int {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		if me, ok := errors.AsType[*MainExitError](err); ok {
			return me.Code
		}
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not end after its main process")
	}
	return -1
}

// TestMainAttached runs the main process of an agent as a process: it starts only when the
// host asks, so its first output reaches the call; the overrides apply; stdin goes in and the
// exit code comes out, and ends the agent.
func TestMainAttached(t *testing.T) {
	a := startMainAgent(t, InitConfig{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{"echo image cmd"},
		Env:        []string{"FROM_IMAGE=img", "OVERRIDDEN=img"},
		WorkingDir: "/",
	}, true)
	ctx := t.Context()
	// Refused requests do not use up the main process.
	for _, bad := range []agentwire.MainStart{
		{Env: []string{"NOEQUALS"}},
		{Cmd: []string{strings.Repeat("x", agentwire.MaxMainString+1)}},
	} {
		err := rawMain(ctx, filepath.Join(a.dir, "agent.sock"), bad)
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("bad request %.60v: %v, want it refused", bad, err)
		}
	}
	dir := t.TempDir()
	var stdout, stderr testutil.SyncBuffer
	p, err := a.client.Main(ctx, agentwire.MainStart{
		Cmd: []string{`echo "first $FROM_IMAGE $OVERRIDDEN $ADDED $PWD"; echo err >&2; read line; echo "got $line"; exit 7`},
		Env: []string{"OVERRIDDEN=host", "ADDED=yes"},
		Dir: dir,
	}, agentwire.ExecIO{Stdin: strings.NewReader("typed\n"), Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 7 || stdout.String() != "first img host yes "+dir+"\ngot typed\n" || stderr.String() != "err\n" {
		t.Errorf("code %d, stdout %q, stderr %q", st.Code, stdout.String(), stderr.String())
	}
	if got := a.console.String(); got != "" {
		t.Errorf("the console got %q: output went past the call", got)
	}
	if code := a.result(t); code != 7 {
		t.Errorf("the agent ended with code %d, want the main process's 7", code)
	}
}

// TestMainMakesWorkDir: a main process's working directory that the guest lacks is made (mode
// 0755), as docker run makes an image's WorkingDir or -w; a path that is no directory fails.
func TestMainMakesWorkDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "made", "by", "agent")
	a := startMainAgent(t, InitConfig{Entrypoint: []string{"sh", "-c"}, Cmd: []string{"pwd"}, WorkingDir: dir}, true)
	var stdout testutil.SyncBuffer
	p, err := a.client.Main(t.Context(), agentwire.MainStart{}, agentwire.ExecIO{Stdout: &stdout})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(); err != nil || st.Code != 0 || stdout.String() != dir+"\n" {
		t.Errorf("main process: %+v, %v, stdout %q", st, err, stdout.String())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode() != fs.ModeDir|0o755 {
		t.Errorf("working directory: %v, %v; want a directory with mode 0755", fi, err)
	}
	if code := a.result(t); code != 0 {
		t.Errorf("the agent ended with code %d", code)
	}

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a = startMainAgent(t, InitConfig{Cmd: []string{"pwd"}}, true)
	p, err = a.client.Main(t.Context(), agentwire.MainStart{Dir: file + "/sub"}, agentwire.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(); err != nil || st.Code != 126 || !strings.Contains(st.Error, "working directory") {
		t.Errorf("main process in a directory under a file: %+v, %v; want code 126 naming the working directory", st, err)
	}
}

// rawMain makes a Main call with req as it is, which the client would refuse to send, and
// returns the agent's answer.
func rawMain(ctx context.Context, sock string, req agentwire.MainStart) error {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	c := connect.NewClient[agentwire.ExecIn, agentwire.ExecOut](hc, "http://agent"+agentwire.ProcMain, connect.WithCodec(agentwire.Codec{}))
	stream := c.CallBidiStream(ctx)
	if err := stream.Send(&agentwire.ExecIn{Main: &req}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_ = stream.CloseRequest()
	_, err := stream.Receive()
	return err
}

// TestMainNotWaiting: an agent that does not wait for a main process refuses Main calls.
func TestMainNotWaiting(t *testing.T) {
	a := startMainAgent(t, InitConfig{Cmd: []string{"true"}}, false)
	_, err := a.client.Main(t.Context(), agentwire.MainStart{}, agentwire.ExecIO{})
	if err == nil || !strings.Contains(err.Error(), agentwire.MainWaitArg) {
		t.Errorf("Main: %v, want a refusal naming %s", err, agentwire.MainWaitArg)
	}
}

// TestMainDetachedAndDisconnect: a detached main process writes to the console; an attached
// one whose call breaks runs on, its output going to the console, and its exit code still
// ends the agent.
func TestMainDetachedAndDisconnect(t *testing.T) {
	t.Run("detached", func(t *testing.T) {
		a := startMainAgent(t, InitConfig{Cmd: []string{"sh", "-c", "echo on the console; exit 4"}}, true)
		p, err := a.client.Main(t.Context(), agentwire.MainStart{Detach: true}, agentwire.ExecIO{})
		if err != nil {
			t.Fatal(err)
		}
		if st, err := p.Wait(); err != nil || st.Code != 0 || p.PID() == 0 {
			t.Errorf("detached Main: %+v, pid %d, %v", st, p.PID(), err)
		}
		if code := a.result(t); code != 4 {
			t.Errorf("exit code %d, want 4", code)
		}
		if got := a.console.String(); got != "on the console\n" {
			t.Errorf("console %q", got)
		}
	})
	t.Run("no command", func(t *testing.T) {
		a := startMainAgent(t, InitConfig{}, true)
		p, err := a.client.Main(t.Context(), agentwire.MainStart{}, agentwire.ExecIO{})
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := p.Wait(); st.Code != 127 || !strings.Contains(st.Error, "give one after --") {
			t.Errorf("status %+v, want 127 with a hint", st)
		}
		if code := a.result(t); code != 127 {
			t.Errorf("exit code %d, want 127", code)
		}
	})
	t.Run("disconnect", func(t *testing.T) {
		flag := filepath.Join(t.TempDir(), "go")
		a := startMainAgent(t, InitConfig{Cmd: []string{"sh", "-c", `echo before; while [ ! -e "$FLAG" ]; do sleep 0.02; done; echo after; exit 5`}}, true)
		ctx, cancel := context.WithCancel(t.Context())
		out := newLineWriter()
		p, err := a.client.Main(ctx, agentwire.MainStart{Env: []string{"FLAG=" + flag}}, agentwire.ExecIO{Stdout: out})
		if err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "before")
		if _, err := a.client.Main(t.Context(), agentwire.MainStart{}, agentwire.ExecIO{}); err == nil || !strings.Contains(err.Error(), "already been started") {
			t.Errorf("a second Main call: %v, want it refused", err)
		}
		cancel()
		<-p.Done()
		// A call on the same connection after the cancellation: the agent has read the
		// call's reset before it answers, so the output that follows is past the call's end.
		if _, err := a.client.Health(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(flag, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if code := a.result(t); code != 5 {
			t.Errorf("exit code %d, want 5", code)
		}
		if got := a.console.String(); got != "after\n" {
			t.Errorf("console %q, want the output after the call ended", got)
		}
	})
}

// TestPID1Main runs the agent as PID 1 waiting for its main process: nothing runs before the
// Main call, the overrides (user, directory, environment, a TTY) apply, the exit code reaches
// the call and the announce socket, and the agent then powers off.
func TestPID1Main(t *testing.T) {
	rootfs := makeRootfs(t)
	cfg := InitConfig{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{"touch /data/started-by-image-cmd"},
		Env:        []string{"GREETING=hello"},
	}
	a, events := startPID1(t, rootfs, cfg, "--wait-main")
	out := newLineWriter()
	p, err := a.client.Main(t.Context(), agentwire.MainStart{
		Cmd:  []string{`ls /data; tty >/dev/null && echo tty; echo "$GREETING $EXTRA from $PWD as $(id -u)"; read x; echo "read $x"; exit 3`},
		Env:  []string{"EXTRA=there"},
		Dir:  "/data",
		User: "tester",
		TTY:  true,
	}, agentwire.ExecIO{Stdin: strings.NewReader("line\n"), Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.ReplaceAll(out.String(), "\r\n", "\n")
	// The terminal echoes the input line whenever it arrives, so each line is looked for on
	// its own.
	if st.Code != 3 || !strings.Contains(got, "tty\n") || !strings.Contains(got, "hello there from /data as 1000\n") || !strings.Contains(got, "read line\n") {
		t.Errorf("code %d, output %q", st.Code, got)
	}
	if strings.Contains(got, "started-by-image-cmd") {
		t.Error("the image's cmd ran before (or besides) the Main call")
	}
	h := waitEvent(t, events)
	if h.Event != "exit" || h.Code == nil || *h.Code != 3 {
		t.Fatalf("event %+v, want exit with code 3", h)
	}
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not power off after the main process ended")
	}
	if ws := a.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGHUP {
		t.Errorf("agent ended with %v, want killed by SIGHUP (reboot in a PID namespace)", a.cmd.ProcessState)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "data/started-by-image-cmd")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the image's cmd ran: %v", err)
	}
}

// announceListener serves the agent's announcements on a Unix socket at path, answering each
// with the time, and returns them.
func announceListener(t *testing.T, path string) <-chan agentwire.Hello {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	events := make(chan agentwire.Hello, 10)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					var h agentwire.Hello
					if json.Unmarshal(sc.Bytes(), &h) == nil {
						events <- h
					}
					_ = json.NewEncoder(conn).Encode(agentwire.TimeSync{UnixNano: time.Now().UnixNano()})
				}
			}()
		}
	}()
	return events
}

func TestMainWaitArg(t *testing.T) {
	t.Parallel()
	for cmdline, want := range map[string]bool{
		"console=ttyS0 " + agentwire.MainWaitArg:    true,
		"console=ttyS0":                             false,
		agentwire.MainWaitArg + " smartvm.main=run": false,
		"smartvm.main=waiting":                      false,
	} {
		if got := mainWaitArg(cmdline); got != want {
			t.Errorf("mainWaitArg(%q) = %v, want %v", cmdline, got, want)
		}
	}
}

// TestMainCommandLine: smartvm-agent --wait-main exits with its main process's exit code.
func TestMainCommandLine(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "init.json")
	if err := os.WriteFile(cfgPath, []byte(`{"entrypoint":["sh","-c"],"cmd":["exit 7"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	code := make(chan int, 1)
	go func() {
		code <- Main([]string{"--listen", "unix:" + sock, "--wait-main", "--config", cfgPath, "--log-level", "error"})
	}()
	dial, err := agentwire.ParseAddr("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	c := agentwire.NewClient(dial)
	defer c.Close()
	var p *agentwire.Process
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if p, err = c.Main(t.Context(), agentwire.MainStart{}, agentwire.ExecIO{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Main: %v", err)
		}
	}
	if st, err := p.Wait(); err != nil || st.Code != 7 {
		t.Errorf("main process: %+v, %v", st, err)
	}
	select {
	case got := <-code:
		if got != 7 {
			t.Errorf("smartvm-agent exited with %d, want 7", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("smartvm-agent did not exit after its main process")
	}
}
