package fakefc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// An HTTP/1.1 server shaped like Firecracker's micro-http, so that what a client sees on the
// wire matches: no Host header needed, HTTP/1.0 answered as 1.1, "Connection: close" ignored,
// pipelining, responses framed as "HTTP/1.1 204 \r\nServer: Firecracker API\r\n
// Connection: keep-alive\r\n..." and its own 400s for malformed requests.

const maxLine = 1024 // micro-http's limit on the request line and each header line

// httpServer serves a Handler on accepted connections.
type httpServer struct {
	h     http.Handler
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

func newHTTPServer(h http.Handler) *httpServer {
	return &httpServer{h: h, conns: map[net.Conn]struct{}{}}
}

// serve accepts connections until ln fails.
func (s *httpServer) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// close drops every open connection.
func (s *httpServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	for c := range s.conns {
		_ = c.Close()
	}
}

func (s *httpServer) serveConn(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	for {
		req, msg, err := readRequest(br)
		if err != nil {
			return
		}
		if msg != "" {
			w := newResponse(bw)
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{ "error": "`+msg+"\nAll previous unanswered requests will be dropped.\" }")
			if w.finish() != nil {
				return
			}
			continue
		}
		if req.ContentLength > 0 && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			_, _ = io.WriteString(bw, "HTTP/1.1 100 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n")
			if bw.Flush() != nil {
				return
			}
		}
		w := newResponse(bw)
		if !s.call(w, req) {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if w.finish() != nil {
			return
		}
	}
}

// call runs the handler; false when it aborted the connection (http.ErrAbortHandler).
func (s *httpServer) call(w http.ResponseWriter, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked as is
				panic(v)
			}
			ok = false
		}
	}()
	s.h.ServeHTTP(w, req)
	return true
}

// readRequest reads one request. msg is micro-http's reason for refusing a malformed one;
// err ends the connection.
func readRequest(br *bufio.Reader) (req *http.Request, msg string, err error) {
	line, err := readLine(br)
	if err != nil {
		return nil, "", err
	}
	if line == "" { // a stray empty line between requests
		if line, err = readLine(br); err != nil {
			return nil, "", err
		}
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return nil, "Invalid request.", drainHeaders(br)
	}
	switch parts[2] {
	case "HTTP/1.1", "HTTP/1.0":
	default:
		return nil, "Invalid HTTP Version: Unsupported HTTP version.", drainHeaders(br)
	}
	req = &http.Request{Method: parts[0], RequestURI: parts[1], Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody}
	if u, err := url.ParseRequestURI(parts[1]); err == nil {
		req.URL = u
	} else {
		req.URL = &url.URL{Path: parts[1]}
	}
	for {
		h, err := readLine(br)
		if err != nil {
			return nil, "", err
		}
		if h == "" {
			break
		}
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			msg = "Invalid header. Reason: Invalid format."
			continue
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	if msg != "" {
		return nil, msg, nil
	}
	if cl := req.Header.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Sprintf("Invalid header. Reason: Invalid value. Key:Content-Length; Value: %s", cl), nil
		}
		req.ContentLength = n
		req.Body = io.NopCloser(io.LimitReader(br, n))
	}
	if strings.EqualFold(req.Header.Get("Transfer-Encoding"), "chunked") {
		req.TransferEncoding = []string{"chunked"}
		req.ContentLength = -1
	}
	return req, "", nil
}

// readLine reads a CRLF- or LF-terminated line of at most maxLine bytes.
func readLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > maxLine+2 {
			return "", errors.New("line too long")
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func drainHeaders(br *bufio.Reader) error {
	for {
		h, err := readLine(br)
		if err != nil || h == "" {
			return err
		}
	}
}

// wireResponse buffers a response and writes it in micro-http's framing.
type wireResponse struct {
	bw     *bufio.Writer
	hdr    http.Header
	status int
	body   bytes.Buffer
	sent   bool
}

func newResponse(bw *bufio.Writer) *wireResponse {
	return &wireResponse{bw: bw, hdr: http.Header{}, status: 200}
}

func (r *wireResponse) Header() http.Header         { return r.hdr }
func (r *wireResponse) WriteHeader(status int)      { r.status = status }
func (r *wireResponse) Write(p []byte) (int, error) { return r.body.Write(p) }

// Flush sends the response now (the handler then starts the guest or ends the process).
func (r *wireResponse) Flush() { _ = r.finish() }

func (r *wireResponse) finish() error {
	if r.sent {
		return nil
	}
	r.sent = true
	fmt.Fprintf(r.bw, "HTTP/1.1 %d \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n", r.status)
	if r.hdr.Get("Deprecation") != "" {
		fmt.Fprintf(r.bw, "Deprecation: %s\r\n", r.hdr.Get("Deprecation"))
	}
	if r.body.Len() > 0 || r.status == 200 {
		ct := r.hdr.Get("Content-Type")
		if ct == "" {
			ct = "application/json"
		}
		fmt.Fprintf(r.bw, "Content-Type: %s\r\nContent-Length: %d\r\n", ct, r.body.Len())
	}
	_, _ = io.WriteString(r.bw, "\r\n")
	_, _ = r.bw.Write(r.body.Bytes())
	return r.bw.Flush()
}
