package fcapi

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// shortDir returns a fresh directory with a short path (a Unix socket path must fit in 108
// bytes), removed when the test ends.
func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// recorded is one request the test server received.
type recorded struct {
	Method, Path  string
	Body          []byte
	ContentLength int64
	Chunked       bool
	Header        http.Header
}

// fakeAPI is an httptest server on a Unix socket that records every request and answers with
// respond (by default: canned JSON for GETs, 204 for the rest).
type fakeAPI struct {
	sock    string
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []recorded
	conns   int
	respond func(w http.ResponseWriter, r *http.Request)
}

func newFakeAPI(t testing.TB, respond func(w http.ResponseWriter, r *http.Request)) *fakeAPI {
	t.Helper()
	return newFakeAPIAt(t, filepath.Join(shortDir(t), "api.sock"), respond)
}

// newFakeAPIAt is newFakeAPI listening at sock.
func newFakeAPIAt(t testing.TB, sock string, respond func(w http.ResponseWriter, r *http.Request)) *fakeAPI {
	t.Helper()
	f := &fakeAPI{sock: sock, respond: respond}
	if f.respond == nil {
		f.respond = cannedAnswers
	}
	l, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Listener.Close()
	f.srv.Listener = l
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
		}
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{
		Method: r.Method, Path: r.URL.Path, Body: body, ContentLength: r.ContentLength,
		Chunked: len(r.TransferEncoding) > 0, Header: r.Header.Clone(),
	})
	f.mu.Unlock()
	f.respond(w, r)
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func (f *fakeAPI) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

func (f *fakeAPI) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = nil
}

// cannedGets are the answers of the default fake to its GET endpoints.
var cannedGets = map[string]any{
	"/":                       InstanceInfo{ID: "vm1", State: StateNotStarted, VMMVersion: "1.14.2", AppName: "Firecracker"},
	"/version":                map[string]string{"firecracker_version": "1.14.2"},
	"/machine-config":         MachineConfig{VCPUCount: 2, MemSizeMiB: 256, HugePages: HugePagesNone},
	"/vm/config":              VMConfig{Drives: []Drive{{DriveID: "rootfs", PathOnHost: "/r.ext4", IsRootDevice: true}}, BootSource: &BootSource{KernelImagePath: "/vmlinux"}},
	"/balloon":                Balloon{AmountMiB: 64, DeflateOnOOM: true},
	"/balloon/statistics":     BalloonStats{TargetPages: 1, ActualPages: 2, TargetMiB: 3, ActualMiB: 4, FreeMemory: 5},
	"/balloon/hinting/status": BalloonHintingStatus{HostCmd: 1},
	"/hotplug/memory":         MemoryHotplugStatus{TotalSizeMiB: 1024, SlotSizeMiB: 128, BlockSizeMiB: 2},
	"/mmds":                   map[string]any{"latest": map[string]any{"meta-data": map[string]any{"id": "vm1"}}},
}

func cannedAnswers(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	v, ok := cannedGets[r.URL.Path]
	if !ok {
		writeFault(w, http.StatusBadRequest, "Invalid request method and/or path: GET "+strings.TrimPrefix(r.URL.Path, "/")+".")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeFault(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}
