package fakefc

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// The conformance harness: scenarios drive a firecracker process (the fake executable, or a
// real Firecracker in TestReal... tests) over raw HTTP on its Unix socket and keep a
// transcript of what they saw. The same scenario runs against both, and the TestReal tests
// compare the transcripts line by line.

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{"firecracker": Main})
}

// target is a firecracker executable and the release it is (or mimics).
type target struct {
	bin     string
	env     []string
	version string
	minor   int
	real    bool
}

func fakeTarget(t *testing.T, version string) target {
	t.Helper()
	_, minor, _, err := parseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	// The fake processes inherit GORACE=atexit_sleep_ms=0 from testutil.Main.
	return target{bin: testutil.Link(t, "firecracker"), env: []string{EnvVersion + "=" + version},
		version: version, minor: minor}
}

// realTarget is the Firecracker named by SMARTVM_FIRECRACKER_BIN; it skips the test
// without one.
func realTarget(t *testing.T) target {
	t.Helper()
	bin := testutil.FirecrackerBin(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	m := regexp.MustCompile(`Firecracker v(\d+\.\d+\.\d+\S*)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s --version printed %q", bin, out)
	}
	version := string(m[1])
	_, minor, _, err := parseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	return target{bin: bin, version: version, minor: minor, real: true}
}

// run is one scenario run against one target: its directory, kernel and transcript.
type run struct {
	t      *testing.T
	tg     target
	dir    string
	kernel string
	mu     sync.Mutex
	lines  []string
}

func newRun(t *testing.T, tg target) *run {
	t.Helper()
	// A fixed-length directory name: error messages carry columns that depend on path lengths,
	// and transcripts of different runs are compared.
	var dir string
	for {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("fakefc-%08x", rand.Uint32()))
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	r := &run{t: t, tg: tg, dir: dir, kernel: filepath.Join(dir, "kernel")}
	if err := testguest.Write(r.kernel); err != nil {
		t.Fatal(err)
	}
	return r
}

// note adds a line to the transcript, with the run's directory replaced by $DIR.
func (r *run) note(format string, args ...any) {
	line := strings.ReplaceAll(fmt.Sprintf(format, args...), r.dir, "$DIR")
	r.mu.Lock()
	r.lines = append(r.lines, line)
	r.mu.Unlock()
}

func (r *run) transcript() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

func (r *run) path(name string) string { return filepath.Join(r.dir, name) }

// proc is one firecracker process.
type proc struct {
	r       *run
	name    string
	sock    string
	cmd     *exec.Cmd
	stdout  testutil.SyncBuffer
	stderr  testutil.SyncBuffer
	done    chan struct{}
	waitErr error
	client  *http.Client
}

// spawn starts the target with args after --api-sock <sock> --id test (when api is true)
// and does not wait for the socket.
func (r *run) spawn(name string, api bool, args ...string) *proc {
	r.t.Helper()
	p := &proc{r: r, name: name, sock: r.path(name + ".sock"), done: make(chan struct{})}
	if api {
		args = append([]string{"--api-sock", p.sock, "--id", "test"}, args...)
	}
	p.cmd = exec.Command(r.tg.bin, args...)
	p.cmd.Env = append(os.Environ(), r.tg.env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.Stdin = nil
	if err := p.cmd.Start(); err != nil {
		r.t.Fatalf("start %s: %v", r.tg.bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	p.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", p.sock)
		},
		DisableKeepAlives: true,
	}}
	r.t.Cleanup(func() {
		if p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
		}
		<-p.done
		_ = os.Remove(p.sock)
	})
	return p
}

// start spawns a process with the API and waits until GET / answers.
func (r *run) start(name string, args ...string) *proc {
	r.t.Helper()
	p := r.spawn(name, true, args...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := p.client.Get("http://localhost/"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.done:
			r.t.Fatalf("%s exited before its API answered: %v\nstdout:\n%s\nstderr:\n%s", name, p.waitErr, p.stdout.String(), p.stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: API not ready after 10s\nstdout:\n%s", name, p.stdout.String())
		}
	}
}

// response is what a request got.
type response struct {
	status     int
	body       string
	deprecated bool
}

// do sends a request and records it in the transcript. body "" sends none.
func (p *proc) do(method, path, body string) response {
	p.r.t.Helper()
	resp := p.send(method, path, body, nil)
	dep := ""
	if resp.deprecated {
		dep = " [Deprecation: true]"
	}
	p.r.note("%s: %s %s %s => %d%s %s", p.name, method, path, digest(body), resp.status, dep, digest(resp.body))
	return resp
}

// send sends a request; edit may change it before it goes.
func (p *proc) send(method, path, body string, edit func(*http.Request)) response {
	p.r.t.Helper()
	resp, err := p.try(method, path, body, edit)
	if err != nil {
		p.r.t.Fatalf("%s %s: %v\nstdout:\n%s", method, path, err, p.stdout.String())
	}
	return resp
}

// try is send that returns transport errors instead of failing the test.
func (p *proc) try(method, path, body string, edit func(*http.Request)) (response, error) {
	p.r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		p.r.t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("read response: %w", err)
	}
	return response{status: resp.StatusCode, body: string(b), deprecated: resp.Header.Get("Deprecation") == "true"}, nil
}

// expect sends a request and checks the status and, unless want is "*", the exact body.
func (p *proc) expect(method, path, body string, status int, want string) response {
	p.r.t.Helper()
	resp := p.do(method, path, body)
	if resp.status != status || (want != "*" && resp.body != want) {
		p.r.t.Errorf("%s %s %s:\n got: %d %s\nwant: %d %s", method, path, clip(body), resp.status, clip(resp.body), status, clip(want))
	}
	return resp
}

// clip shortens long bodies for transcripts and messages.
func clip(s string) string {
	if len(s) > 400 {
		return fmt.Sprintf("%s...(%d bytes)", s[:200], len(s))
	}
	return s
}

// digest shortens a long body for a transcript while keeping it comparable.
func digest(s string) string {
	if len(s) > 4000 {
		return fmt.Sprintf("%s...(%d bytes, sha256 %x)", s[:200], len(s), sha256.Sum256([]byte(s)))
	}
	return s
}

// faultBody is the body of a 400 with msg.
func faultBody(msg string) string {
	b, _ := marshal(jobj{{"fault_message", msg}})
	return string(b)
}

// ok204 expects a 204.
func (p *proc) ok(method, path, body string) {
	p.r.t.Helper()
	p.expect(method, path, body, 204, "")
}

// refused expects a 400 with msg.
func (p *proc) refused(method, path, body, msg string) {
	p.r.t.Helper()
	p.expect(method, path, body, 400, faultBody(msg))
}

// state checks GET / reports state.
func (p *proc) state(state string) {
	p.r.t.Helper()
	p.expect("GET", "/", "", 200, fmt.Sprintf(`{"id":"test","state":%q,"vmm_version":%q,"app_name":"Firecracker"}`, state, p.r.tg.version))
}

// exitStatus describes how a process ended: "exit N" or "signal NAME".
func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exit %d", ee.ExitCode())
	}
	return err.Error()
}

// wait waits for the process to end and checks how.
func (p *proc) wait(want string) {
	p.r.t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.r.t.Fatalf("%s did not exit within 10s\nstdout:\n%s", p.name, p.stdout.String())
	}
	got := exitStatus(p.waitErr)
	p.r.note("%s: %s", p.name, got)
	if got != want {
		p.r.t.Errorf("%s ended with %s, want %s\nstdout:\n%s\nstderr:\n%s", p.name, got, want, p.stdout.String(), p.stderr.String())
	}
}

// alive checks the process is still running after d.
func (p *proc) alive(d time.Duration) {
	p.r.t.Helper()
	select {
	case <-p.done:
		p.r.t.Errorf("%s exited (%s), want it running", p.name, exitStatus(p.waitErr))
	case <-time.After(d):
		p.r.note("%s: alive", p.name)
	}
}

// logLine matches one Firecracker log line; the guest's serial bytes may sit around it, as
// Firecracker writes both to stdout.
var logLine = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[[^\]\n]*\] [^\n]*(\n|$)`)

// serial returns the guest's lines so far (the test guest's lines on stdout).
func (p *proc) serial() []string {
	var out []string
	for _, l := range strings.Split(logLine.ReplaceAllString(p.stdout.String(), ""), "\n") {
		if strings.HasPrefix(l, "smartvm-testguest: ") {
			out = append(out, l)
		}
	}
	return out
}

// waitSerial waits for a guest line and records it.
func (p *proc) waitSerial(line string) {
	p.r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range p.serial() {
			if l == line {
				p.r.note("%s: serial %s", p.name, line)
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	p.r.t.Fatalf("%s: no serial line %q within 10s\nstdout:\n%s", p.name, line, p.stdout.String())
}

// logLines returns the Firecracker log lines of text without their timestamps, wherever
// they sit among the guest's serial bytes.
func logLines(text string) []string {
	var out []string
	for _, l := range logLine.FindAllString(text, -1) {
		out = append(out, strings.TrimSuffix(l[len("2006-01-02T15:04:05.000000000 "):], "\n"))
	}
	return out
}

// hasLog checks the log in text has a line (without timestamp) and records it.
func (r *run) hasLog(what, text, line string) {
	r.t.Helper()
	for _, l := range logLines(text) {
		if l == line {
			r.note("%s log: %s", what, line)
			return
		}
	}
	r.t.Errorf("%s: no log line %q in:\n%s", what, line, text)
}

// boot configures the test guest in mode and starts it.
func (p *proc) boot(mode string) {
	p.r.t.Helper()
	p.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, p.r.kernel, testguest.BootArgs(mode)))
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32}`)
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	p.waitSerial(testguest.FirstLine(mode))
}
