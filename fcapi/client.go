package fcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// DefaultRequestTimeout bounds a request whose ctx has no deadline (snapshot create and load
// excepted). Change it with WithRequestTimeout.
const DefaultRequestTimeout = 10 * time.Second

// DefaultMaxPayload is Firecracker's default limit on a request body, in bytes
// (--http-api-max-payload-size). Change it with WithMaxPayload.
const DefaultMaxPayload = 51200

// maxConns caps the connections to one Firecracker: it serves requests one at a time and
// accepts at most 10 connections in all.
const maxConns = 4

// maxResponseBody caps a successful response body (the MMDS store is the largest).
const maxResponseBody = 16 << 20

// Client talks to one Firecracker process over its API socket. It is safe for concurrent use;
// Firecracker itself answers one request at a time.
type Client struct {
	sock          string
	hc            *http.Client
	tr            *http.Transport
	log           *slog.Logger
	timeout       time.Duration
	maxPayload    int
	onDeprecation func(method, path string)
	features      *featureTable

	verMu sync.Mutex
	ver   Version // zero until known
}

// Option configures a Client.
type Option func(*Client)

// WithLogger sets the logger for request traces (Debug) and deprecation warnings (Warn). By
// default the client is silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// WithVersion presets the running Firecracker version, so the version gate never asks GET
// /version. By default the client asks once, on the first request that uses a feature not
// every release has.
func WithVersion(v Version) Option { return func(c *Client) { c.ver = v } }

// WithRequestTimeout sets the timeout applied to a request whose ctx has no deadline
// (DefaultRequestTimeout unless set); d <= 0 applies none. Snapshot create and load never get
// it: they may legitimately take minutes and are bounded by their ctx only.
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithMaxPayload tells the client the body limit the Firecracker process was started with
// (its --http-api-max-payload-size; DefaultMaxPayload unless set). A larger body is refused
// before it is sent, with an error wrapping ErrPayloadTooLarge: Firecracker would answer it
// before reading the body and then parse the unread bytes as further requests.
func WithMaxPayload(n int) Option { return func(c *Client) { c.maxPayload = n } }

// WithDeprecationHandler sets a function called, after the response arrives, for every
// request that Firecracker answered with the header "Deprecation: true" (it used a deprecated
// field, such as cpu_template or MMDS V1).
func WithDeprecationHandler(fn func(method, path string)) Option {
	return func(c *Client) { c.onDeprecation = fn }
}

// New returns a client for the Firecracker API socket at socketPath. It connects lazily, on the
// first request.
func New(socketPath string, opts ...Option) *Client {
	c := &Client{
		sock:       socketPath,
		log:        slog.New(slog.DiscardHandler),
		timeout:    DefaultRequestTimeout,
		maxPayload: DefaultMaxPayload,
		features:   specTable,
	}
	for _, o := range opts {
		o(c)
	}
	c.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socketPath)
		},
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c
}

// SocketPath returns the API socket path the client dials.
func (c *Client) SocketPath() string { return c.sock }

// Close closes the idle connections. The client stays usable: a later request dials again.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// Version returns the running Firecracker version. The first call asks GET /version; later
// calls return the cached answer (or the one given with WithVersion).
func (c *Client) Version(ctx context.Context) (Version, error) {
	c.verMu.Lock()
	defer c.verMu.Unlock()
	if !c.ver.IsZero() {
		return c.ver, nil
	}
	var out struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	if err := c.do(ctx, request{method: http.MethodGet, path: "/version", out: &out}); err != nil {
		return Version{}, err
	}
	v, err := ParseVersion(out.FirecrackerVersion)
	if err != nil {
		return Version{}, fmt.Errorf("firecracker GET /version: %w", err)
	}
	c.ver = v
	return v, nil
}

// cachedVersion returns the version if it is already known, without asking.
func (c *Client) cachedVersion() Version {
	c.verMu.Lock()
	defer c.verMu.Unlock()
	return c.ver
}

// get asks a GET endpoint and decodes its answer.
func get[T any](ctx context.Context, c *Client, path string) (T, error) {
	var out T
	err := c.call(ctx, request{method: http.MethodGet, path: path, out: &out})
	return out, err
}

// send sends in to a PUT or PATCH endpoint that answers without data.
func (c *Client) send(ctx context.Context, method, path string, in any) error {
	return c.call(ctx, request{method: method, path: path, in: in})
}

// request is one API call.
type request struct {
	method string
	// op is the endpoint as the spec names it, such as "PUT /drives/{drive_id}"; empty when it
	// equals method+" "+path.
	op   string
	path string
	// in is the body, marshalled as JSON; nil sends none.
	in any
	// body is in, marshalled.
	body []byte
	// out receives a 200 response's JSON body; nil discards it.
	out any
	// slow exempts the request from the default timeout (snapshot create and load).
	slow bool
}

func (r request) endpoint() string {
	if r.op != "" {
		return r.op
	}
	return r.method + " " + r.path
}

// call checks the request against the version gate, then sends it.
func (c *Client) call(ctx context.Context, r request) error {
	if r.in != nil {
		var err error
		if r.body, err = json.Marshal(r.in); err != nil {
			return fmt.Errorf("firecracker %s %s: encode body: %w", r.method, r.path, err)
		}
	}
	if err := c.gate(ctx, r.endpoint(), r.body); err != nil {
		return err
	}
	return c.do(ctx, r)
}

// do sends one request and decodes its answer.
func (c *Client) do(ctx context.Context, r request) error {
	if _, ok := ctx.Deadline(); !ok && !r.slow && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if c.maxPayload > 0 && len(r.body) > c.maxPayload {
		return fmt.Errorf("firecracker %s %s: a body of %d bytes is over the API's limit of %d bytes "+
			"(start firecracker with a larger --http-api-max-payload-size and pass it with fcapi.WithMaxPayload): %w",
			r.method, r.path, len(r.body), c.maxPayload, ErrPayloadTooLarge)
	}
	// A bytes.Reader gives the request its Content-Length, the only framing Firecracker reads.
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, "http://localhost"+r.path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", r.method, r.path, err)
	}
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", r.method, r.path, err)
	}
	dropConn := false
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
		resp.Body.Close()
		if dropConn {
			// The connection is back in the idle pool; it must not carry another request.
			c.tr.CloseIdleConnections()
		}
	}()
	if c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.Debug("firecracker api", "method", r.method, "path", r.path, "status", resp.StatusCode, "duration", time.Since(start))
	}
	if resp.Header.Get("Deprecation") == "true" {
		c.log.Warn("firecracker reports a deprecated API use", "method", r.method, "path", r.path)
		if c.onDeprecation != nil {
			c.onDeprecation(r.method, r.path)
		}
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent:
	default:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		msg, apiLayer := parseErrorBody(body)
		dropConn = !apiLayer
		return &APIError{Method: r.method, Path: r.path, StatusCode: resp.StatusCode, FaultMessage: msg}
	}
	if r.out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBody)).Decode(r.out); err != nil {
		return fmt.Errorf("firecracker %s %s: decode response: %w", r.method, r.path, err)
	}
	return nil
}
