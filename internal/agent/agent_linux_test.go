package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

func TestExecBasics(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	for _, tc := range []struct {
		name           string
		start          agentwire.ExecStart
		stdin          string
		stdout, stderr string
		code           int
		errorContains  string
	}{
		{name: "echo", start: agentwire.ExecStart{Args: []string{"echo", "hello", "world"}}, stdout: "hello world\n"},
		{name: "exit code", start: agentwire.ExecStart{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}}, stdout: "out\n", stderr: "err\n", code: 7},
		{name: "stdin", start: agentwire.ExecStart{Args: []string{"cat"}}, stdin: "from stdin\n", stdout: "from stdin\n"},
		{name: "env and dir", start: agentwire.ExecStart{Args: []string{"sh", "-c", "echo $FOO $PWD $HOME"}, Env: []string{"FOO=bar"}, Dir: "/data"}, stdout: "bar /data /root\n"},
		{name: "user by name", start: agentwire.ExecStart{Args: []string{"id"}, User: "tester"}, stdout: "uid=1000(tester) gid=1000(tester) groups=10(wheel),1000(tester)\n"},
		{name: "user uid:gid", start: agentwire.ExecStart{Args: []string{"id", "-u"}, User: "1234:10"}, stdout: "1234\n"},
		{name: "unknown command", start: agentwire.ExecStart{Args: []string{"no-such-command"}}, code: 127, errorContains: "no-such-command: command not found"},
		{name: "unknown user", start: agentwire.ExecStart{Args: []string{"true"}, User: "nobody-here"}, code: 126, errorContains: "no such user"},
		{name: "missing dir", start: agentwire.ExecStart{Args: []string{"true"}, Dir: "/nowhere"}, code: 126, errorContains: "working directory /nowhere"},
		{name: "killed by signal", start: agentwire.ExecStart{Args: []string{"sh", "-c", "kill -TERM $$"}}, code: 128 + 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, st := a.run(t, tc.start, tc.stdin)
			if stdout != tc.stdout || stderr != tc.stderr || st.Code != tc.code {
				t.Errorf("got stdout %q stderr %q code %d, want %q %q %d (status %+v)", stdout, stderr, st.Code, tc.stdout, tc.stderr, tc.code, st)
			}
			if tc.errorContains != "" && !contains(st.Error, tc.errorContains) {
				t.Errorf("error %q does not contain %q", st.Error, tc.errorContains)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// lineWriter lets a test wait for a line of a command's output.
type lineWriter struct {
	mu    sync.Mutex
	buf   strings.Builder
	lines chan string
	part  string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 100)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.part += string(p)
	for {
		i := strings.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		select {
		case w.lines <- strings.TrimRight(w.part[:i], "\r"):
		default:
		}
		w.part = w.part[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *lineWriter) waitFor(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-w.lines:
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no line with %q in output %q", want, w.String())
		}
	}
}

func TestExecTTY(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := newLineWriter()
	pr, pw := io.Pipe()
	p, err := a.client.Exec(ctx, agentwire.ExecStart{
		Args: []string{"sh", "-c", `stty size; tty; read x; stty size; echo "got $x"; exit 4`},
		TTY:  true, Rows: 30, Cols: 100,
	}, agentwire.ExecIO{Stdin: pr, Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "30 100")
	out.waitFor(t, "/dev/pts/")
	if err := p.Resize(40, 120); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 4 {
		t.Errorf("exit code %d, want 4", st.Code)
	}
	for _, want := range []string{"40 120", "got hello"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}
}

func TestExecSignals(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	out := newLineWriter()
	p, err := a.client.Exec(ctx, agentwire.ExecStart{
		Args: []string{"sh", "-c", `trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.05; done`},
	}, agentwire.ExecIO{Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "ready")
	if err := p.Signal(int(syscall.SIGTERM)); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 3 || !strings.Contains(out.String(), "got TERM") {
		t.Errorf("after SIGTERM: status %+v, err %v, output %q; want code 3 and 'got TERM'", st, err, out.String())
	}

	p, err = a.client.Exec(ctx, agentwire.ExecStart{Args: []string{"sleep", "100"}}, agentwire.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(int(syscall.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	st, err = p.Wait()
	if err != nil || st.Signal != int(syscall.SIGKILL) || st.Code != 137 {
		t.Errorf("after SIGKILL: status %+v, err %v; want signal 9, code 137", st, err)
	}
	if err := p.Signal(int(syscall.SIGTERM)); err == nil {
		t.Error("signalling an ended command succeeded")
	}
}

func TestExecCancelKillsCommand(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	ctx, cancel := context.WithCancel(context.Background())
	out := newLineWriter()
	p, err := a.client.Exec(ctx, agentwire.ExecStart{Args: []string{"sh", "-c", "echo $$; exec sleep 100"}}, agentwire.ExecIO{Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	var pid string
	select {
	case pid = <-out.lines:
	case <-time.After(10 * time.Second):
		t.Fatal("no pid")
	}
	cancel()
	if _, err := p.Wait(); err == nil {
		t.Error("Wait after cancel returned no error")
	}
	// The agent kills the command when its caller goes away.
	deadline := time.Now().Add(10 * time.Second)
	for {
		stdout, _, _ := a.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", "test -e /proc/" + pid + " && echo alive || echo gone"}}, "")
		if strings.TrimSpace(stdout) == "gone" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s still alive after its exec was cancelled", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestZombiesReaped(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	// The shell exits at once; its background children become orphans of PID 1.
	_, _, st := a.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", "for i in 1 2 3 4 5; do sleep 0.05 </dev/null >/dev/null 2>&1 & done"}}, "")
	if st.Code != 0 {
		t.Fatalf("status %+v", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		stdout, _, _ := a.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", "sleep 0.2; cat /proc/[0-9]*/stat"}}, "")
		zombies := 0
		for _, line := range strings.Split(stdout, "\n") {
			// pid (comm) state ...
			if i := strings.LastIndexByte(line, ')'); i > 0 && strings.HasPrefix(line[i+1:], " Z") {
				zombies++
			}
		}
		if zombies == 0 && strings.Contains(stdout, "(agent-nsinit)") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombies remain:\n%s", zombies, stdout)
		}
	}
}

func TestConcurrentExecs(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out bytes.Buffer
			p, err := a.client.Exec(ctx, agentwire.ExecStart{Args: []string{"sh", "-c", "sleep 0.2; echo $0; cat", strconv.Itoa(i)}},
				agentwire.ExecIO{Stdin: strings.NewReader(strings.Repeat("x", 100000)), Stdout: &out})
			if err != nil {
				errs <- err
				return
			}
			st, err := p.Wait()
			want := strconv.Itoa(i) + "\n" + strings.Repeat("x", 100000)
			if err != nil || st.Code != 0 || out.String() != want {
				errs <- fmt.Errorf("exec %d: status %+v, err %v, %d bytes of output", i, st, err, out.Len())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// slowCounter counts bytes and sleeps a little every few MiB, as a slow reader would.
type slowCounter struct{ n, next int64 }

func (c *slowCounter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if c.n >= c.next {
		time.Sleep(2 * time.Millisecond)
		c.next = c.n + 4<<20
	}
	return len(p), nil
}

func TestExecGiBOutputFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GiB; skipped under -short")
	}
	a := startNSAgent(t, makeRootfs(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// 1 GiB; under the race detector, which checks every byte copied, 128 MiB still shows
	// whether memory follows the output.
	mib := 1024
	if raceEnabled {
		mib = 128
	}
	var out slowCounter
	p, err := a.client.Exec(ctx, agentwire.ExecStart{Args: []string{"dd", "if=/dev/zero", "bs=1048576", "count=" + strconv.Itoa(mib)}}, agentwire.ExecIO{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("status %+v, err %v", st, err)
	}
	if out.n != int64(mib)<<20 {
		t.Errorf("got %d bytes, want %d MiB", out.n, mib)
	}
	// The agent's peak resident memory: bounded by its buffers, nowhere near the 1 GiB it
	// passed on (the bound allows for the race detector's overhead).
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var hwmKiB int64
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			hwmKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	t.Logf("agent peak RSS after streaming %d MiB: %d MiB", mib, hwmKiB>>10)
	if hwmKiB == 0 || hwmKiB > 256<<10 {
		t.Errorf("agent peak RSS %d KiB: want under 256 MiB", hwmKiB)
	}
}
