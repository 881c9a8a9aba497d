package fakefc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/fcspec"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// client talks to an in-process fake over its socket.
type client struct {
	t    *testing.T
	sock string
	hc   *http.Client
}

func newClient(t *testing.T, sock string) *client {
	return &client{t: t, sock: sock, hc: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
}

func (c *client) do(method, path, body string) (int, string) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (c *client) must(method, path, body string, status int) string {
	c.t.Helper()
	got, b := c.do(method, path, body)
	if got != status {
		c.t.Fatalf("%s %s %s: %d %s, want %d", method, path, body, got, b, status)
	}
	return b
}

// listen starts an in-process fake in a temporary directory.
func listen(t *testing.T, opts Options) (*Server, *client, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	s, err := Listen(sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, newClient(t, sock), dir
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func bootBody(kernel, mode string) string {
	return fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, kernel, testguest.BootArgs(mode))
}

func writeGuest(t *testing.T, dir string) string {
	t.Helper()
	k := filepath.Join(dir, "guest")
	if err := testguest.Write(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestListenLifecycle(t *testing.T) {
	testutil.CheckLeaks(t)
	var serial testutil.SyncBuffer
	var logBuf testutil.SyncBuffer
	s, c, dir := listen(t, Options{Stdout: &serial, Log: &logBuf, ID: "vm-1"})
	kernel := writeGuest(t, dir)
	if got := c.must("GET", "/", "", 200); got != `{"id":"vm-1","state":"Not started","vmm_version":"1.14.2","app_name":"Firecracker"}` {
		t.Errorf("GET / = %s", got)
	}
	c.must("PUT", "/boot-source", bootBody(kernel, testguest.ModeHello), 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the hello guest did not end the emulated process")
	}
	if code := s.Handler().ExitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if got := serial.String(); got != testguest.HelloLine+"\n" {
		t.Errorf("serial %q", got)
	}
	// The process is gone: nothing answers, but the socket file stays until Close.
	if _, err := net.Dial("unix", s.Path()); err == nil {
		t.Error("the socket still accepts connections after the process ended")
	}
	if _, err := os.Stat(s.Path()); err != nil {
		t.Errorf("socket file: %v", err)
	}
	reqs := s.Handler().Requests()
	want := []Request{{"GET", "/", nil}, {"PUT", "/boot-source", []byte(bootBody(kernel, testguest.ModeHello))},
		{"PUT", "/actions", []byte(`{"action_type":"InstanceStart"}`)}}
	if len(reqs) != len(want) {
		t.Fatalf("requests %+v", reqs)
	}
	for i := range want {
		if reqs[i].Method != want[i].Method || reqs[i].Path != want[i].Path || !bytes.Equal(reqs[i].Body, want[i].Body) {
			t.Errorf("request %d = %s %s %q, want %s %s %q", i, reqs[i].Method, reqs[i].Path, reqs[i].Body, want[i].Method, want[i].Path, want[i].Body)
		}
	}
	line := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[vm-1:(main|fc_api|fc_vcpu 0)\] .+$`)
	logs := strings.Split(strings.TrimSpace(logBuf.String()), "\n")
	for _, l := range logs {
		if !line.MatchString(l) {
			t.Errorf("log line not in Firecracker's format: %q", l)
		}
	}
	for _, wantLine := range []string{"Listening on API socket (", "API server started.", "Firecracker exiting successfully. exit_code=0"} {
		if !slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, wantLine) }) {
			t.Errorf("no log line with %q in:\n%s", wantLine, logBuf.String())
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the socket: %v", err)
	}
}

func TestListenSocketDelay(t *testing.T) {
	s, c, _ := listen(t, Options{SocketDelay: 300 * time.Millisecond})
	st, err := os.Stat(s.Path())
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the socket file should exist at once: %v", err)
	}
	_, err = net.Dial("unix", s.Path())
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect before listen: %v, want ECONNREFUSED", err)
	}
	waitFor(t, "the socket to listen", func() bool {
		conn, err := net.Dial("unix", s.Path())
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	c.must("GET", "/version", "", 200)
}

func TestListenSocketInUse(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(sock, Options{})
	if !errors.Is(err, ErrSocketInUse) || !strings.Contains(err.Error(), "Failed to open the API socket at: "+sock) {
		t.Fatalf("Listen on a used path: %v", err)
	}
}

func TestOptionsErrors(t *testing.T) {
	for _, o := range []Options{{Version: "9.9.9"}, {Version: "1.14"}, {Version: "1.5.0"}, {Modes: []string{"explode"}}} {
		if _, err := NewHandler(o); err == nil {
			t.Errorf("NewHandler(%+v) succeeded", o)
		}
	}
	h, err := NewHandler(Options{Version: "v1.14.1"})
	if err != nil || h.Version() != "1.14.1" {
		t.Errorf("a patch release of an embedded minor: %v %v", h, err)
	}
}

func TestModeFailStart(t *testing.T) {
	_, c, dir := listen(t, Options{Modes: []string{ModeFailStart}})
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeHello), 204)
	for range 2 {
		got := c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400)
		if !strings.Contains(got, "Start microvm error: Could not access KVM: Error creating KVM object: Permission denied (os error 13)") {
			t.Errorf("InstanceStart: %s", got)
		}
	}
	if got := c.must("GET", "/", "", 200); !strings.Contains(got, `"state":"Not started"`) {
		t.Errorf("GET / = %s", got)
	}
	c.must("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64}`, 204)
}

func TestModeIgnoreCtrlAltDel(t *testing.T) {
	testutil.CheckLeaks(t)
	var serial testutil.SyncBuffer
	s, c, dir := listen(t, Options{Modes: []string{ModeIgnoreCtrlAltDel}, Stdout: &serial})
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeCAD), 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	waitFor(t, "the ready line", func() bool { return strings.Contains(serial.String(), testguest.ReadyLine) })
	c.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	select {
	case <-s.Done():
		t.Fatal("Ctrl-Alt-Del ended the process in ignore-ctrl-alt-del mode")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestCounterFreezesWhilePaused(t *testing.T) {
	testutil.CheckLeaks(t)
	var serial testutil.SyncBuffer
	s, c, dir := listen(t, Options{Stdout: &serial})
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeCounter), 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	ticks := func() int { return strings.Count(serial.String(), testguest.TickPrefix) }
	waitFor(t, "three ticks", func() bool { return ticks() >= 3 })
	c.must("PATCH", "/vm", `{"state":"Paused"}`, 204)
	n := ticks()
	time.Sleep(10 * tickInterval)
	if got := ticks(); got != n {
		t.Errorf("%d ticks while paused", got-n)
	}
	c.must("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	waitFor(t, "ticks after resume", func() bool { return ticks() > n+2 })
	// Ticks count on from where they stopped.
	for i, l := range strings.Split(strings.TrimSpace(serial.String()), "\n") {
		if got, ok := testguest.ParseTick(l); !ok || got != uint64(i) {
			t.Fatalf("line %d is %q, want tick %d", i, l, i)
		}
	}
	c.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	<-s.Done()
}

func TestSnapshotInProcess(t *testing.T) {
	testutil.CheckLeaks(t)
	var serial testutil.SyncBuffer
	s, c, dir := listen(t, Options{Stdout: &serial})
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeCounter), 204)
	c.must("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`, 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	waitFor(t, "ticks", func() bool { return strings.Count(serial.String(), testguest.TickPrefix) >= 2 })
	c.must("PATCH", "/vm", `{"state":"Paused"}`, 204)
	state, mem := filepath.Join(dir, "state"), filepath.Join(dir, "mem")
	c.must("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"snapshot_type":"Diff"}`, state, mem), 204)
	ticked := strings.Count(serial.String(), testguest.TickPrefix)
	st, err := os.Stat(mem)
	if err != nil || st.Size() != 512<<20 {
		t.Fatalf("memory file %v, %v", st, err)
	}
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint64(data) != snapshotMagic || !bytes.Contains(data[:32], []byte("8.0.0")) {
		t.Errorf("state file header %x", data[:32])
	}
	if v, err := describeSnapshot(state, false); err != nil || v != "v8.0.0" {
		t.Errorf("describe: %q %v", v, err)
	}
	c.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	c.must("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	<-s.Done()

	// A fresh process restores the guest where it was: it ticks on from the same number.
	var serial2 testutil.SyncBuffer
	s2, c2, _ := listen(t, Options{Stdout: &serial2})
	c2.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"resume_vm":true}`, state, mem), 204)
	if got := c2.must("GET", "/machine-config", "", 200); got != `{"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("restored machine config %s", got)
	}
	waitFor(t, "ticks after restore", func() bool { return strings.Contains(serial2.String(), testguest.TickLine(uint64(ticked+1))) })
	if first, _, _ := strings.Cut(serial2.String(), "\n"); first != testguest.TickLine(uint64(ticked)) {
		t.Errorf("the restored guest started with %q, want %q", first, testguest.TickLine(uint64(ticked)))
	}
	c2.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	<-s2.Done()

	// Snapshots of another format version do not load, and the process ends.
	s3, c3, _ := listen(t, Options{Version: "1.7.0"})
	got := c3.must("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem), 400)
	if !strings.Contains(got, "Invalid data version: 8.0.0") {
		t.Errorf("load of a v1.14 snapshot by v1.7: %s", got)
	}
	<-s3.Done()
	if code := s3.Handler().ExitCode(); code != 1 {
		t.Errorf("exit code %d after a failed load, want 1", code)
	}
}

func TestSerialFile(t *testing.T) {
	var stdout testutil.SyncBuffer
	_, c, dir := listen(t, Options{Stdout: &stdout})
	out := filepath.Join(dir, "serial.out")
	c.must("PUT", "/serial", fmt.Sprintf(`{"serial_out_path":%q}`, out), 204)
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeHalt), 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	waitFor(t, "the halt line in the serial file", func() bool {
		b, _ := os.ReadFile(out)
		return string(b) == testguest.HaltLine+"\n"
	})
	if stdout.String() != "" {
		t.Errorf("stdout got %q with a serial file set", stdout.String())
	}
}

// linuxKernel writes a minimal 64-bit ELF header that is not the test guest.
func linuxKernel(t *testing.T, dir string) string {
	t.Helper()
	h := make([]byte, 4096)
	copy(h, "\x7fELF\x02\x01\x01")
	binary.LittleEndian.PutUint64(h[24:], 0x1000000)
	k := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(k, h, 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLinuxGuest(t *testing.T) {
	testutil.CheckLeaks(t)
	var serial, logBuf testutil.SyncBuffer
	s, c, dir := listen(t, Options{Stdout: &serial, Log: &logBuf, BootTimer: true})
	c.must("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k panic=1"}`, linuxKernel(t, dir)), 204)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	waitFor(t, "the boot log", func() bool { return strings.Contains(serial.String(), "Linux version") })
	if strings.Contains(serial.String(), "smartvm-testguest") {
		t.Errorf("a Linux kernel behaved as the test guest: %q", serial.String())
	}
	c.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	<-s.Done()
	if !strings.HasSuffix(serial.String(), "reboot: Restarting system\n") {
		t.Errorf("serial %q", serial.String())
	}
	if !regexp.MustCompile(`\[anonymous-instance:fc_vcpu 0\] Guest-boot-time = +\d+ us \d+ ms, +\d+ CPU us \d+ CPU ms`).MatchString(logBuf.String()) {
		t.Errorf("no boot time in the log:\n%s", logBuf.String())
	}
	// Without console=ttyS0 (Firecracker's default command line) nothing is printed.
	var quiet testutil.SyncBuffer
	s2, c2, dir2 := listen(t, Options{Stdout: &quiet})
	c2.must("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, linuxKernel(t, dir2)), 204)
	c2.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	c2.must("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204)
	<-s2.Done()
	if quiet.String() != "" {
		t.Errorf("serial %q without a console", quiet.String())
	}
}

func TestLoggerAndMetrics(t *testing.T) {
	_, c, dir := listen(t, Options{})
	logPath, metricsPath := filepath.Join(dir, "fc.log"), filepath.Join(dir, "metrics.json")
	c.must("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"warn","show_level":true,"show_log_origin":true}`, logPath), 204)
	c.must("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metricsPath), 204)
	c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeCAD), 204)
	c.must("PUT", "/boot-source", `{"kernel_image_path":"/nonexistent"}`, 400)
	c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	c.must("PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204)
	c.must("PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204)
	logText, _ := os.ReadFile(logPath)
	// Warning level: the refusal is logged, the successes are not.
	if !regexp.MustCompile(`\[anonymous-instance:fc_api:ERROR:src/[^\]]+\] Received Error\. Status code: 400 Bad Request\. Message: Boot source error`).Match(logText) ||
		strings.Contains(string(logText), "executed successfully") {
		t.Errorf("log:\n%s", logText)
	}
	lines := strings.Split(strings.TrimSpace(func() string { b, _ := os.ReadFile(metricsPath); return string(b) }()), "\n")
	if len(lines) != 2 {
		t.Fatalf("metrics lines: %q", lines)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, `{"utc_timestamp_ms":`) {
			t.Errorf("metrics line %q", l)
		}
	}
	// Counters are deltas, and a request counts once it has run (as with Firecracker, the
	// first line does not count the FlushMetrics that writes it).
	if !strings.Contains(lines[0], `"put_api_requests":{"actions_count":1,"actions_fails":0,"boot_source_count":2,"boot_source_fails":1`) ||
		!strings.Contains(lines[1], `"put_api_requests":{"actions_count":1,"actions_fails":0,"boot_source_count":0`) {
		t.Errorf("metrics:\n%s", strings.Join(lines, "\n"))
	}
}

func TestHandlerWithHTTPTest(t *testing.T) {
	h, err := NewHandler(Options{Version: "1.7.0"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Close()
	resp, err := http.Get(srv.URL + "/version")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != `{"firecracker_version":"1.7.0"}` || resp.Header.Get("Server") != "Firecracker API" {
		t.Errorf("GET /version = %s %v", b, resp.Header)
	}
	req, _ := http.NewRequest("PUT", srv.URL+"/serial", strings.NewReader(`{}`))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || string(b) != `{"fault_message":"Invalid request method and/or path: PUT serial."}` {
		t.Errorf("PUT /serial on v1.7.0 = %d %s", resp.StatusCode, b)
	}
}

// TestEveryRelease boots the hello guest under every embedded release.
func TestEveryRelease(t *testing.T) {
	for _, r := range fcspec.Releases() {
		t.Run(r.Version, func(t *testing.T) {
			t.Parallel()
			var serial testutil.SyncBuffer
			s, c, dir := listen(t, Options{Version: r.Version, Stdout: &serial})
			if got := c.must("GET", "/version", "", 200); got != fmt.Sprintf(`{"firecracker_version":%q}`, r.Version) {
				t.Errorf("GET /version = %s", got)
			}
			c.must("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`, 204)
			c.must("PUT", "/boot-source", bootBody(writeGuest(t, dir), testguest.ModeHello), 204)
			c.must("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
			<-s.Done()
			if serial.String() != testguest.HelloLine+"\n" {
				t.Errorf("serial %q", serial.String())
			}
		})
	}
}

// A chunked body is refused as micro-http refuses it. (A real Firecracker sometimes resets
// the connection after that answer, so the conformance scenarios leave it out.)
func TestChunkedBody(t *testing.T) {
	s, _, _ := listen(t, Options{})
	c, err := net.Dial("unix", s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "PATCH /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n12\r\n{\"state\":\"Paused\"}\r\n0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	want := "HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 81\r\n\r\n" +
		`{ "error": "Invalid request.` + "\nAll previous unanswered requests will be dropped.\" }"
	// The chunk lines then arrive as malformed requests, and get refused too.
	if err != nil || !strings.HasPrefix(string(buf[:n]), want) {
		t.Errorf("got %q %v\nwant %q", buf[:n], err, want)
	}
}

func TestLoggerModuleFilter(t *testing.T) {
	var b testutil.SyncBuffer
	l := newLogger(&b, "vm")
	mod := "firecracker::api_server"
	if err := l.configure(loggerConfig{Module: &mod}, true); err != nil {
		t.Fatal(err)
	}
	l.info(threadMain, "from main")
	l.info(threadAPI, "from the API")
	if got := b.String(); strings.Contains(got, "from main") || !strings.Contains(got, "[vm:fc_api] from the API") {
		t.Errorf("module filter %q let through:\n%s", mod, got)
	}
}

func TestServeHTTPDirect(t *testing.T) {
	h, err := NewHandler(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PUT", "/actions", strings.NewReader(`{"action_type":"FlushMetrics"}`)))
	if rec.Code != 400 || rec.Body.String() != `{"fault_message":"The requested operation is not supported before starting the microVM."}` {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
	req, _ := http.NewRequest("GET", "http://x/machine-config", nil) // no RequestURI
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.HasPrefix(rec.Body.String(), `{"vcpu_count":1`) {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
}
