package agentwire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// ChunkSize is the most bytes one stdin, output or tar message carries.
const ChunkSize = 256 << 10

// MaxMessage is the most bytes either side reads as one message: the other side is
// untrusted (a guest's agent for the host, the host for the agent), and a larger length
// prefix is refused instead of allocated.
const MaxMessage = 4 << 20

// baseURL is the agent's URL: the transport ignores the host, and dials the agent.
const baseURL = "http://agent"

// DialFunc opens a new stream connection to the agent.
type DialFunc func(ctx context.Context) (net.Conn, error)

// ParseAddr parses an agent address: "unix:PATH" or "tcp:HOST:PORT". It returns a dial
// function for it.
func ParseAddr(addr string) (DialFunc, error) {
	network, rest, ok := strings.Cut(addr, ":")
	if !ok || rest == "" || (network != "unix" && network != "tcp") {
		return nil, fmt.Errorf("agent address %q: want unix:PATH or tcp:HOST:PORT", addr)
	}
	if network == "tcp" {
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return nil, fmt.Errorf("agent address %q: %w", addr, err)
		}
	}
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, rest)
	}, nil
}

// Client calls an agent. Its calls share one HTTP/2 connection, dialled on first use and again
// after it breaks; file copies use HTTP/1.1 connections of their own. Close releases idle
// connections.
type Client struct {
	tr, bulk *http.Transport
	bulkHC   *http.Client
	exec     *connect.Client[ExecIn, ExecOut]
	main     *connect.Client[ExecIn, ExecOut]
	stat     *connect.Client[PathRequest, FileInfo]
	mkdir    *connect.Client[PathRequest, Empty]
	remove   *connect.Client[PathRequest, Empty]
	health   *connect.Client[Empty, Health]
}

// NewClient returns a client that reaches the agent through dial.
func NewClient(dial DialFunc) *Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     4 << 20,
			MaxReceiveBufferPerConnection: 16 << 20,
			MaxReadFrameSize:              1 << 20,
		},
	}
	// Copies go over HTTP/1.1, a connection each: their bytes then flow straight through the
	// socket, in whole chunks, without HTTP/2's framing, flow control and buffer copies.
	// Exec needs HTTP/2 (a bidirectional stream), and the small calls share it.
	var bulkProtos http.Protocols
	bulkProtos.SetHTTP1(true)
	bulk := &http.Transport{
		Protocols: &bulkProtos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		MaxIdleConnsPerHost: 4,
		WriteBufferSize:     CopyChunkSize + 64,
		ReadBufferSize:      CopyChunkSize + 64,
	}
	hc := &http.Client{Transport: tr}
	bulkClient := &http.Client{Transport: bulk}
	// No gzip: the transport is local (vsock or a socket), where compressing costs far more
	// than it saves.
	opts := []connect.ClientOption{connect.WithCodec(Codec{}), connect.WithAcceptCompression("gzip", nil, nil), connect.WithReadMaxBytes(MaxMessage)}
	return &Client{
		tr:     tr,
		bulk:   bulk,
		bulkHC: bulkClient,
		exec:   connect.NewClient[ExecIn, ExecOut](hc, baseURL+ProcExec, opts...),
		main:   connect.NewClient[ExecIn, ExecOut](hc, baseURL+ProcMain, opts...),
		stat:   connect.NewClient[PathRequest, FileInfo](hc, baseURL+ProcStat, opts...),
		mkdir:  connect.NewClient[PathRequest, Empty](hc, baseURL+ProcMkdir, opts...),
		remove: connect.NewClient[PathRequest, Empty](hc, baseURL+ProcRemove, opts...),
		health: connect.NewClient[Empty, Health](hc, baseURL+ProcHealth, opts...),
	}
}

// Close closes the client's idle connection. Calls in progress go on.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	c.bulk.CloseIdleConnections()
	return nil
}

// Health asks the agent how it is.
func (c *Client) Health(ctx context.Context) (Health, error) {
	res, err := c.health.CallUnary(ctx, connect.NewRequest(&Empty{}))
	if err != nil {
		return Health{}, callError("health check", "", err)
	}
	h := *res.Msg
	h.Version, h.Hostname = GuestText(h.Version), GuestText(h.Hostname)
	return h, nil
}

// Stat describes path in the guest (without following a final symlink). A missing path gives an
// error wrapping fs.ErrNotExist. The answer is checked and its link target made safe to show
// (FileInfo.checked): an answer no lstat of path gives is an error.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	res, err := c.stat.CallUnary(ctx, connect.NewRequest(&PathRequest{Path: path}))
	if err != nil {
		return FileInfo{}, callError("stat", path, err)
	}
	return res.Msg.checked(path)
}

// Mkdir creates the directory path in the guest with mode perm (0: 0755), and its missing
// parents when parents is set.
func (c *Client) Mkdir(ctx context.Context, path string, perm fs.FileMode, parents bool) error {
	_, err := c.mkdir.CallUnary(ctx, connect.NewRequest(&PathRequest{Path: path, Mode: uint32(perm.Perm()), Recursive: parents}))
	return callError("mkdir", path, err)
}

// Remove removes path in the guest; a directory only when empty, unless recursive.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.remove.CallUnary(ctx, connect.NewRequest(&PathRequest{Path: path, Recursive: recursive}))
	return callError("remove", path, err)
}

// Upload sends the tar stream r to the agent, which creates its entries under the existing
// guest directory dir, within lim. It returns the number of entries created. The stream goes
// as the body of an HTTP/1.1 POST (ProcUpload), on a connection of its own: the agent reads
// it from the socket straight into the buffers it writes files from. A reader with WriteTo
// (a Pipe) hands the transport whole chunks.
func (c *Client) Upload(ctx context.Context, dir string, lim Limits, r io.Reader) (int, error) {
	q := url.Values{UploadQueryDir: {dir}}
	if lim.MaxBytes != 0 {
		q.Set(UploadQueryMaxBytes, strconv.FormatInt(lim.MaxBytes, 10))
	}
	if lim.MaxFiles != 0 {
		q.Set(UploadQueryMaxFiles, strconv.Itoa(lim.MaxFiles))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+ProcUpload+"?"+q.Encode(), io.NopCloser(r))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", TarContentType)
	res, err := c.bulkHC.Do(req)
	if err != nil {
		return 0, callError("upload to", dir, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, MaxMessage))
	if err != nil {
		return 0, callError("upload to", dir, err)
	}
	if res.StatusCode != http.StatusOK {
		return 0, httpCallError("upload to", dir, res.Status, body)
	}
	var out UploadResult
	if err := json.Unmarshal(body, &out); err != nil {
		return 0, fmt.Errorf("agent upload to %s: %w", dir, err)
	}
	return out.Files, nil
}

// sendChunks sends what r gives, as it comes (stdin may be interactive), in pieces of at most
// ChunkSize, until EOF.
func sendChunks(r io.Reader, send func([]byte) error) error {
	buf := make([]byte, ChunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := send(buf[:n]); serr != nil {
				return serr
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return fmt.Errorf("read: %w", err)
		}
	}
}

// httpCallError is the error of a plain HTTP call (upload, download) that failed with status
// and body, a CallError.
func httpCallError(op, path, status string, body []byte) error {
	var ce CallError
	var code connect.Code
	if json.Unmarshal(body, &ce) != nil || code.UnmarshalText([]byte(ce.Code)) != nil {
		return fmt.Errorf("agent %s %s: %s", op, path, GuestText(status))
	}
	return callError(op, path, connect.NewError(code, errors.New(ce.Message)))
}

// Download returns a tar stream of path in the guest: a file, or a directory and its tree,
// named base(path). It comes as the body of an HTTP/1.1 GET (ProcDownload) on a connection
// of its own; an error the agent meets once the stream has begun is the reader's error at
// its end. Close the reader to end the call early.
func (c *Client) Download(ctx context.Context, path string) (io.ReadCloser, error) {
	q := url.Values{DownloadQueryPath: {path}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+ProcDownload+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	res, err := c.bulkHC.Do(req)
	if err != nil {
		return nil, callError("download", path, err)
	}
	if res.StatusCode != http.StatusOK {
		defer res.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(res.Body, MaxMessage))
		return nil, httpCallError("download", path, res.Status, body)
	}
	return &downloadReader{path: path, res: res}, nil
}

// downloadReader reads a download's body; at its end, the agent's error in the trailer.
type downloadReader struct {
	path string
	res  *http.Response
}

func (r *downloadReader) Read(p []byte) (int, error) {
	n, err := r.res.Body.Read(p)
	if errors.Is(err, io.EOF) {
		if msg := r.res.Trailer.Get(DownloadErrorTrailer); msg != "" {
			err = fmt.Errorf("download %s: %s", r.path, GuestText(msg))
		}
	} else if err != nil {
		err = callError("download", r.path, err)
	}
	return n, err
}

func (r *downloadReader) Close() error { return r.res.Body.Close() }

// callError turns a failed call into an error naming op and path. A Connect NotFound error
// wraps fs.ErrNotExist, AlreadyExists fs.ErrExist, and PermissionDenied fs.ErrPermission.
func callError(op, path string, err error) error {
	if err == nil {
		return nil
	}
	what := op
	if path != "" {
		what += " " + path
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("agent %s: %w", what, err)
	}
	// The message is the guest's: bounded and without control characters.
	msg := GuestText(ce.Message())
	var kind error
	switch ce.Code() {
	case connect.CodeNotFound:
		kind = fs.ErrNotExist
	case connect.CodeAlreadyExists:
		kind = fs.ErrExist
	case connect.CodePermissionDenied:
		kind = fs.ErrPermission
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return fmt.Errorf("agent %s: %w", what, err)
	default:
		return fmt.Errorf("%s: %s", what, msg)
	}
	return &RemoteError{Op: what, Msg: msg, kind: kind}
}

// RemoteError is a failure the agent reports about a path. It matches fs.ErrNotExist,
// fs.ErrExist or fs.ErrPermission with errors.Is, as the agent classified it.
type RemoteError struct {
	Op, Msg string
	kind    error
}

func (e *RemoteError) Error() string { return e.Op + ": " + e.Msg }

// Is reports whether target is the kind of failure this is.
func (e *RemoteError) Is(target error) bool { return target == e.kind }
