package fcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRequestFraming(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	ctx := t.Context()
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutEntropy(ctx, EntropyDevice{}); err != nil {
		t.Fatal(err)
	}
	if err := c.StopBalloonHinting(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetInstanceInfo(ctx); err != nil {
		t.Fatal(err)
	}
	rs := api.requests()
	put, entropy, stop, get := rs[0], rs[1], rs[2], rs[3]
	if put.ContentLength != int64(len(put.Body)) || put.Chunked || put.Header.Get("Content-Type") != "application/json" {
		t.Errorf("PUT framing: Content-Length %d for %d bytes, chunked %v, Content-Type %q", put.ContentLength, len(put.Body), put.Chunked, put.Header.Get("Content-Type"))
	}
	if string(entropy.Body) != "{}" || entropy.ContentLength != 2 {
		t.Errorf("PUT /entropy with no limiter sent %q (length %d), want {}", entropy.Body, entropy.ContentLength)
	}
	if len(stop.Body) != 0 || stop.ContentLength != 0 || stop.Chunked {
		t.Errorf("PATCH /balloon/hinting/stop sent body %q, length %d, chunked %v", stop.Body, stop.ContentLength, stop.Chunked)
	}
	if len(get.Body) != 0 || get.Header.Get("Accept") != "application/json" || get.Header.Get("Accept-Encoding") != "" {
		t.Errorf("GET sent body %q, headers %v", get.Body, get.Header)
	}
}

func TestResponsesDecode(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	ctx := t.Context()
	info, err := c.GetInstanceInfo(ctx)
	if err != nil || info != cannedGets["/"] {
		t.Errorf("GetInstanceInfo = %+v, %v", info, err)
	}
	mc, err := c.GetMachineConfig(ctx)
	if err != nil || mc != cannedGets["/machine-config"] {
		t.Errorf("GetMachineConfig = %+v, %v", mc, err)
	}
	stats, err := c.GetBalloonStats(ctx)
	if err != nil || stats != cannedGets["/balloon/statistics"] {
		t.Errorf("GetBalloonStats = %+v, %v", stats, err)
	}
	cfg, err := c.GetVMConfig(ctx)
	if err != nil || len(cfg.Drives) != 1 || cfg.BootSource.KernelImagePath != "/vmlinux" {
		t.Errorf("GetVMConfig = %+v, %v", cfg, err)
	}
	var mmds struct {
		Latest struct {
			MetaData map[string]string `json:"meta-data"`
		} `json:"latest"`
	}
	if err := c.GetMMDS(ctx, &mmds); err != nil || mmds.Latest.MetaData["id"] != "vm1" {
		t.Errorf("GetMMDS = %+v, %v", mmds, err)
	}

	bad := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"id":`) })
	bc := New(bad.sock)
	defer bc.Close()
	if _, err := bc.GetInstanceInfo(ctx); err == nil || !strings.Contains(err.Error(), "decode response") {
		t.Errorf("truncated JSON: %v", err)
	}
}

func TestAPIErrors(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name      string
		status    int
		body      string
		want      string
		afterBoot bool
		preBoot   bool
	}{
		{name: "fault_message", status: 400, body: `{"fault_message":"Invalid request method and/or path: PUT foo."}`, want: "Invalid request method and/or path: PUT foo."},
		{name: "after boot", status: 400, body: `{"fault_message":"The requested operation is not supported after starting the microVM."}`, want: msgNotAllowedAfterBoot, afterBoot: true},
		{name: "before boot", status: 400, body: `{"fault_message":"The requested operation is not supported before starting the microVM."}`, want: msgNotAllowedBeforeBoot, preBoot: true},
		// micro-http's own errors hold raw newlines, which strict JSON rejects.
		{name: "micro-http error", status: 400, body: "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped.\" }", want: "Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped."},
		{name: "too many connections", status: 503, body: `{ "error": "Too many open connections" }`, want: "Too many open connections"},
		{name: "mmds too large", status: 413, body: `{"fault_message":"The MMDS data store size limit was exceeded."}`, want: "The MMDS data store size limit was exceeded."},
		{name: "plain text", status: 500, body: "something broke\n", want: "something broke"},
		{name: "empty", status: 500, body: "", want: ""},
		{name: "other JSON", status: 400, body: `{"message":"x"}`, want: `{"message":"x"}`},
		{name: "huge", status: 400, body: huge, want: huge[:maxErrorBody]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			})
			c := New(api.sock, WithVersion(newest))
			defer c.Close()
			err := c.PutBootSource(t.Context(), BootSource{KernelImagePath: "/k"})
			var e *APIError
			if !errors.As(err, &e) {
				t.Fatalf("got %T %v, want *APIError", err, err)
			}
			if e.Method != "PUT" || e.Path != "/boot-source" || e.StatusCode != tc.status || e.FaultMessage != tc.want {
				t.Errorf("got %+v, want message %q", *e, tc.want)
			}
			if errors.Is(err, ErrNotAllowedAfterBoot) != tc.afterBoot || errors.Is(err, ErrNotAllowedBeforeBoot) != tc.preBoot {
				t.Errorf("errors.Is: after boot %v, before boot %v", errors.Is(err, ErrNotAllowedAfterBoot), errors.Is(err, ErrNotAllowedBeforeBoot))
			}
			if errors.Is(err, errors.ErrUnsupported) {
				t.Error("an API error matches errors.ErrUnsupported")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("firecracker PUT /boot-source: status %d: ", tc.status)) {
				t.Errorf("message %q", msg[:min(len(msg), 200)])
			}
			if tc.want == "" && !strings.HasSuffix(msg, http.StatusText(tc.status)) {
				t.Errorf("empty body: message %q lacks the status text", msg)
			}
		})
	}
}

// recordingHandler keeps slog records for assertions.
type recordingHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func TestDeprecationHeader(t *testing.T) {
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/machine-config" {
			w.Header().Set("Deprecation", "true")
		}
		w.WriteHeader(http.StatusNoContent)
	})
	var mu sync.Mutex
	var got []string
	h := &recordingHandler{}
	c := New(api.sock, WithVersion(newest), WithLogger(slog.New(h)), WithDeprecationHandler(func(method, path string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, method+" "+path)
	}))
	defer c.Close()
	ctx := t.Context()
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: CPUTemplateNone}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: "/k"}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "PUT /machine-config" {
		t.Errorf("deprecation handler saw %v", got)
	}
	levels := map[slog.Level]int{}
	for _, r := range h.records {
		levels[r.Level]++
	}
	if levels[slog.LevelWarn] != 1 || levels[slog.LevelDebug] != 2 {
		t.Errorf("logged %v, want one warning and a debug line per request", levels)
	}
}

func TestDefaultLoggerIsSilent(t *testing.T) {
	c := New("/nonexistent.sock")
	if c.log.Enabled(t.Context(), slog.LevelError) {
		t.Error("the default logger is enabled")
	}
}

// slowAPI answers after delay, or when the request is cancelled.
func slowAPI(t *testing.T, delay time.Duration) *fakeAPI {
	return newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(delay):
			w.WriteHeader(http.StatusNoContent)
		case <-r.Context().Done():
		}
	})
}

func TestTimeouts(t *testing.T) {
	api := slowAPI(t, 80*time.Millisecond)
	c := New(api.sock, WithVersion(newest), WithRequestTimeout(20*time.Millisecond))
	defer c.Close()
	err := c.PauseVM(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no ctx deadline: got %v, want the default timeout", err)
	}
	// A ctx deadline replaces the default timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.PauseVM(ctx); err != nil {
		t.Errorf("ctx with its own deadline: %v", err)
	}
	// Snapshot calls never get the default timeout.
	if err := c.CreateSnapshot(context.Background(), SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}); err != nil {
		t.Errorf("CreateSnapshot: %v", err)
	}
	if err := c.LoadSnapshot(context.Background(), SnapshotLoadParams{SnapshotPath: "/s", MemBackend: MemoryBackend{BackendType: MemBackendFile, BackendPath: "/m"}}); err != nil {
		t.Errorf("LoadSnapshot: %v", err)
	}
	// A cancelled ctx ends a call at once.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	none := New(api.sock, WithVersion(newest), WithRequestTimeout(0))
	defer none.Close()
	if err := none.ResumeVM(context.Background()); err != nil {
		t.Errorf("no timeout: %v", err)
	}
}

func TestConnectionReuse(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	for range 20 {
		if _, err := c.GetInstanceInfo(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := api.connections(); n != 1 {
		t.Errorf("20 sequential requests used %d connections, want 1", n)
	}
	// Close drops the idle connection; the client still works.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetInstanceInfo(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := api.connections(); n != 2 {
		t.Errorf("after Close: %d connections, want 2", n)
	}
}

func TestConnectionCap(t *testing.T) {
	var inFlight, peak atomic.Int32
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		inFlight.Add(-1)
		w.WriteHeader(http.StatusNoContent)
	})
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	var wg sync.WaitGroup
	for range 3 * maxConns {
		wg.Go(func() {
			if err := c.PauseVM(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > maxConns || api.connections() > maxConns {
		t.Errorf("peak %d requests in flight over %d connections; the cap is %d", p, api.connections(), maxConns)
	}
}

func TestInvalidIDs(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	ctx := t.Context()
	for _, err := range []error{
		c.PutDrive(ctx, Drive{DriveID: "root-fs", PathOnHost: "/r"}),
		c.PutDrive(ctx, Drive{PathOnHost: "/r"}),
		c.PatchNetworkInterface(ctx, NetworkInterfaceUpdate{IfaceID: "eth/0"}),
		c.DeletePmem(ctx, "p ä"),
	} {
		if err == nil || !strings.Contains(err.Error(), "letters, digits and '_'") {
			t.Errorf("got %v, want an ID error", err)
		}
	}
	if n := len(api.requests()); n != 0 {
		t.Errorf("%d requests with bad IDs were sent", n)
	}
}

func TestNoSocket(t *testing.T) {
	sock := filepath.Join(shortDir(t), "missing.sock")
	c := New(sock)
	defer c.Close()
	if c.SocketPath() != sock {
		t.Errorf("SocketPath = %s", c.SocketPath())
	}
	_, err := c.GetInstanceInfo(t.Context())
	if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "GET /") {
		t.Errorf("got %v, want an error naming the request and the socket", err)
	}
}

func TestMMDSRawJSON(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	raw := []byte(`{"a":{"b":[1,2]}}`)
	if err := c.PutMMDS(t.Context(), json.RawMessage(raw)); err != nil {
		t.Fatal(err)
	}
	if got := api.requests()[0].Body; !bytes.Equal(got, raw) {
		t.Errorf("sent %s, want %s", got, raw)
	}
}

// TestMicroHTTPErrorDropsConnection: after an error from Firecracker's HTTP layer, which may
// leave part of the request unread on the connection, the next request uses a new one; an
// API-layer error keeps the connection.
func TestMicroHTTPErrorDropsConnection(t *testing.T) {
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/micro":
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped.\" }")
		case "/api":
			writeFault(w, http.StatusBadRequest, "Invalid request method and/or path: GET api.")
		default:
			cannedAnswers(w, r)
		}
	})
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	ctx := t.Context()
	get := func(path string) error { return c.do(ctx, request{method: http.MethodGet, path: path}) }
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	var apiErr *APIError
	if err := get("/api"); !errors.As(err, &apiErr) {
		t.Fatalf("GET /api: %v, want an *APIError", err)
	}
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	if n := api.connections(); n != 1 {
		t.Errorf("after an API-layer error: %d connections, want 1", n)
	}
	if err := get("/micro"); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "Unsupported HTTP method") {
		t.Fatalf("GET /micro: %v, want the micro-http message", err)
	}
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	if n := api.connections(); n != 2 {
		t.Errorf("after a micro-http error: %d connections, want 2 (the old one dropped)", n)
	}
}

func TestPayloadLimit(t *testing.T) {
	api := newFakeAPI(t, nil)
	ctx := t.Context()
	big := map[string]string{"a": strings.Repeat("x", DefaultMaxPayload)}
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	err := c.PutMMDS(ctx, big)
	if !errors.Is(err, ErrPayloadTooLarge) || !strings.Contains(err.Error(), "--http-api-max-payload-size") {
		t.Fatalf("PutMMDS of %d bytes: %v, want ErrPayloadTooLarge naming the flag", DefaultMaxPayload+8, err)
	}
	if n := len(api.requests()); n != 0 {
		t.Fatalf("the server saw %d requests, want none", n)
	}
	// With the limit raised to match the process, the same body goes through.
	c2 := New(api.sock, WithVersion(newest), WithMaxPayload(2*DefaultMaxPayload))
	defer c2.Close()
	if err := c2.PutMMDS(ctx, big); err != nil {
		t.Fatalf("PutMMDS under a raised limit: %v", err)
	}
}
