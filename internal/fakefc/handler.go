package fakefc

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Failure modes (Options.Modes, SMARTVM_FAKEFC_MODE).
const (
	// ModeExitEarly: the process logs an error and exits 1 before creating its socket.
	ModeExitEarly = "exit-early"
	// ModeNoSocket: the process runs but never creates its socket.
	ModeNoSocket = "no-socket"
	// ModeSlowSocket: the socket file appears SlowSocketDelay before it accepts connections.
	ModeSlowSocket = "slow-socket"
	// ModeFailStart: InstanceStart fails with a /dev/kvm permission error; the VM stays
	// configurable and InstanceStart may be retried (and fails again).
	ModeFailStart = "fail-start"
	// ModeIgnoreCtrlAltDel: SendCtrlAltDel succeeds but never reaches the guest.
	ModeIgnoreCtrlAltDel = "ignore-ctrl-alt-del"
	// ModeIgnoreSigterm: the process ignores SIGTERM (only SIGKILL ends it).
	ModeIgnoreSigterm = "ignore-sigterm"
	// ModeSlowSnapshot: creating a snapshot takes SlowSnapshotDelay, as writing a large
	// guest's memory does, so that a test can interrupt the process that asked for it.
	ModeSlowSnapshot = "slow-snapshot"
)

// SlowSnapshotDelay is how long a snapshot takes in ModeSlowSnapshot.
const SlowSnapshotDelay = 2 * time.Second

// SlowSocketDelay is the bind-to-listen delay of ModeSlowSocket.
const SlowSocketDelay = 2 * time.Second

var knownModes = []string{ModeExitEarly, ModeNoSocket, ModeSlowSocket, ModeFailStart, ModeIgnoreCtrlAltDel, ModeIgnoreSigterm, ModeSlowSnapshot}

// DefaultMaxPayload is Firecracker's default --http-api-max-payload-size.
const DefaultMaxPayload = 51200

// Options configure a fake Firecracker. The zero value mimics v1.14.2 with a silent console
// and log.
type Options struct {
	// Version is the Firecracker release to mimic, such as "1.14.2" (the default) or
	// "1.7.0": any release embedded in internal/fcspec, or another patch release of the same
	// minor release.
	Version string
	// SocketDelay is the time between the socket file appearing (bind) and the socket
	// accepting connections (listen), Firecracker's start-up race. Zero: none.
	SocketDelay time.Duration
	// Modes are failure modes (the Mode constants).
	Modes []string
	// Stdout receives the guest's serial console when PUT /serial names no file. Nil: discarded.
	Stdout io.Writer
	// Log receives Firecracker-format log lines until a log file is configured. Nil: discarded.
	Log io.Writer
	// ID is the instance ID (--id). Empty: "anonymous-instance".
	ID string
	// MaxPayload is the API body limit (--http-api-max-payload-size). Zero: 51200.
	MaxPayload int
	// MmdsSizeLimit is the MMDS data store limit (--mmds-size-limit). Zero: MaxPayload.
	MmdsSizeLimit int
	// EnablePCI mimics --enable-pci.
	EnablePCI bool
	// BootTimer mimics --boot-timer: a Linux guest's boot time is logged.
	BootTimer bool
	// VsockForward maps guest vsock ports to host Unix sockets that stand in for the guest
	// programs listening on them (an agent run on the host, say): once the guest's vsock
	// driver is up, a CONNECT to such a port is relayed to its socket, and turned down when
	// nothing listens there. Nil: the guest's own behaviour only.
	VsockForward map[uint32]string
}

func (o Options) has(mode string) bool { return slices.Contains(o.Modes, mode) }

// Request is one request the fake received, recorded before any check.
type Request struct {
	Method string
	// Path is the request target as sent, such as "/drives/rootfs".
	Path string
	// Body is nil when the request had none.
	Body []byte
}

// Handler is the fake's API: an http.Handler with Firecracker's state machine for one VM.
// It serves one request at a time, as Firecracker does. When the emulated process ends
// (the guest resets, Ctrl-Alt-Del, a failed snapshot load, a panic), Done is closed and later
// requests are dropped without a response (ServeHTTP panics with http.ErrAbortHandler, which
// servers treat as "close the connection").
type Handler struct {
	opts       Options
	rel        *release
	log        *fcLogger
	vm         *vm
	maxPayload int

	mu sync.Mutex // one request at a time

	reqMu sync.Mutex
	reqs  []Request

	done chan struct{}
}

// NewHandler returns a fake Firecracker API in the pre-boot state. It fails for an unknown
// release or failure mode.
func NewHandler(opts Options) (*Handler, error) { return newHandler(opts, nil) }

// newHandler builds a handler; log, when not nil, is the process's logger (Main's).
func newHandler(opts Options, log *fcLogger) (*Handler, error) {
	rel, err := loadRelease(opts.Version)
	if err != nil {
		return nil, err
	}
	if err := rel.load(); err != nil {
		return nil, err
	}
	for _, m := range opts.Modes {
		if !slices.Contains(knownModes, m) {
			return nil, fmt.Errorf("fake firecracker: unknown failure mode %q (known: %s)", m, strings.Join(knownModes, ", "))
		}
	}
	if opts.ID == "" {
		opts.ID = "anonymous-instance"
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.MmdsSizeLimit <= 0 {
		opts.MmdsSizeLimit = opts.MaxPayload
	}
	if log == nil {
		log = newLogger(opts.Log, opts.ID)
	}
	h := &Handler{opts: opts, rel: rel, log: log, maxPayload: opts.MaxPayload, done: make(chan struct{})}
	h.vm = &vm{
		rel: rel, log: h.log, metrics: newMetrics(), id: opts.ID, stdout: opts.Stdout,
		failBoot: opts.has(ModeFailStart), noCAD: opts.has(ModeIgnoreCtrlAltDel), slowSnapshot: opts.has(ModeSlowSnapshot),
		mmdsLimit: opts.MmdsSizeLimit, enablePCI: opts.EnablePCI, bootTimer: opts.BootTimer,
		vsockForward: opts.VsockForward,
		machine:      defaultMachine(), exited: make(chan struct{}),
	}
	h.vm.onExit = func(int) { close(h.done) }
	return h, nil
}

// Done is closed when the emulated Firecracker process has ended.
func (h *Handler) Done() <-chan struct{} { return h.done }

// ExitCode waits for Done and returns the exit status of the emulated process: 0 after a
// guest reset or Ctrl-Alt-Del, 1 after a failed snapshot load, 134 after a panic (the
// process aborts), -1 when Close ended it.
func (h *Handler) ExitCode() int {
	<-h.done
	return h.vm.exitCode
}

// Version is the release the handler mimics, like "1.14.2".
func (h *Handler) Version() string { return h.rel.version }

// Requests returns the requests received so far, oldest first.
func (h *Handler) Requests() []Request {
	h.reqMu.Lock()
	defer h.reqMu.Unlock()
	return slices.Clone(h.reqs)
}

// Close releases what the emulated VM holds (the vsock socket, log and metrics files) and
// ends it, as if the process were killed.
func (h *Handler) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.vm.exit(-1)
	h.log.close()
	h.vm.metrics.close()
}

func (h *Handler) record(r Request) {
	h.reqMu.Lock()
	h.reqs = append(h.reqs, r)
	h.reqMu.Unlock()
}

var statusText = map[int]string{200: "200 OK", 204: "204 No Content", 400: "400 Bad Request", 413: "413 Payload too large"}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-h.done:
		panic(http.ErrAbortHandler) // the process is gone: no response
	default:
	}
	if r.RequestURI == "" { // a request built in process rather than read from a connection
		r.RequestURI = r.URL.RequestURI()
	}
	var body []byte
	if r.ContentLength > 0 && r.ContentLength <= int64(h.maxPayload) {
		body = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			panic(http.ErrAbortHandler)
		}
	}
	h.record(Request{Method: r.Method, Path: r.RequestURI, Body: body})
	hdr := w.Header()
	hdr.Set("Server", "Firecracker API")
	hdr.Set("Connection", "keep-alive")

	// Checks micro-http makes before the request reaches the API server.
	switch {
	case !h.methodKnown(r.Method):
		h.httpError(w, "Invalid HTTP Method: Unsupported HTTP method.")
		return
	case r.ContentLength < 0 || len(r.TransferEncoding) > 0:
		h.httpError(w, "Invalid request.")
		return
	case r.ContentLength > int64(h.maxPayload):
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, r.ContentLength)) // micro-http reads it all first
		h.httpError(w, fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, h.maxPayload))
		return
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	start := time.Now()
	method := titleMethod(r.Method)
	if body != nil {
		h.log.info(threadAPI, "The API server received a %s request on %s with body %s.", method, rustDebugString(r.RequestURI), rustDebugString(string(body)))
	} else {
		h.log.info(threadAPI, "The API server received a %s request on %s.", method, rustDebugString(r.RequestURI))
	}
	c, perr := h.parse(r.Method, r.RequestURI, body)
	if perr != nil {
		h.log.err(threadAPI, "%s", perr.logged)
		h.vm.metrics.count(r.Method, "", true)
		h.fault(w, perr, false)
		return
	}
	if c.deprecation != "" {
		h.vm.metrics.deprecated()
	}
	out, aerr := h.run(c)
	if h.vm.aborted {
		panic(http.ErrAbortHandler) // the process panicked: no response
	}
	h.vm.metrics.count(r.Method, c.metric, aerr != nil)
	switch {
	case aerr != nil:
		h.log.err(threadAPI, "Received Error. Status code: %s. Message: %s", statusText[aerr.status], aerr.msg)
		h.fault(w, aerr, c.deprecation != "")
	case out != nil:
		b, err := marshal(out)
		if err != nil {
			panic(fmt.Sprintf("fakefc: encode response: %v", err)) // our own values always encode
		}
		h.log.info(threadAPI, "The request was executed successfully. Status code: 200 OK.")
		h.respond(w, 200, b, c.deprecation != "")
	default:
		h.log.info(threadAPI, "The request was executed successfully. Status code: 204 No Content.")
		h.respond(w, 204, nil, c.deprecation != "")
	}
	if aerr == nil && c.name != "" {
		h.log.info(threadAPI, "'%s' API request took %d us.", c.name, time.Since(start).Microseconds())
	}
	if c.deprecation != "" {
		h.log.warn(threadAPI, "%s", c.deprecation)
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	hooks := h.vm.afterResponse
	h.vm.afterResponse = nil
	for _, hook := range hooks {
		hook()
	}
}

// run applies the pre-/post-boot rules, then the call.
func (h *Handler) run(c *call) (any, *apiError) {
	v := h.vm
	switch {
	case c.phase == phasePre && v.booted:
		return nil, fault(msgPreBootOnly)
	case c.phase == phasePost && !v.booted:
		return nil, fault(msgPostBootOnly)
	}
	return c.run(v, h)
}

func (h *Handler) methodKnown(m string) bool {
	switch m {
	case "GET", "PUT", "PATCH":
		return true
	case "DELETE":
		return h.rel.atLeast(16)
	}
	return false
}

func (h *Handler) respond(w http.ResponseWriter, status int, body []byte, deprecated bool) {
	if deprecated {
		w.Header().Set("Deprecation", "true")
	}
	if body != nil {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	}
	w.WriteHeader(status)
	if body != nil {
		_, _ = w.Write(body)
	}
}

func (h *Handler) fault(w http.ResponseWriter, e *apiError, deprecated bool) {
	b, _ := marshal(jobj{{"fault_message", e.msg}})
	h.respond(w, e.status, b, deprecated)
}

// httpError is micro-http's own error response. Its body is not valid JSON: the message and
// a second line sit inside the string as Firecracker sends them.
func (h *Handler) httpError(w http.ResponseWriter, msg string) {
	h.respond(w, 400, []byte(`{ "error": "`+msg+"\nAll previous unanswered requests will be dropped.\" }"), false)
}
