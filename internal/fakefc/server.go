package fakefc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// maxConnections is micro-http's limit on open API connections.
const maxConnections = 10

// ErrSocketInUse is returned by Listen when the socket path already exists: Firecracker
// refuses to start then.
var ErrSocketInUse = errors.New("socket path already exists")

// Server is a fake Firecracker serving its API on a Unix socket in this process.
type Server struct {
	h    *Handler
	path string

	mu       sync.Mutex
	bound    *boundSocket
	ln       net.Listener
	http     *httpServer
	closed   bool
	stopOnce sync.Once
	stopped  chan struct{} // closed when serving has stopped
	cancel   chan struct{} // closed by Close to abandon a pending listen
}

// Listen starts a fake Firecracker on socketPath. The socket file exists when Listen
// returns; with Options.SocketDelay (or ModeSlowSocket) it accepts connections only after
// that delay, as Firecracker's socket does between bind and listen. It fails, as Firecracker
// does, when the path already exists (wrapping ErrSocketInUse) or cannot be bound. When the
// emulated process ends (see Handler) the server stops accepting connections but leaves the
// socket file, as Firecracker does; Close stops it and removes the socket.
func Listen(socketPath string, opts Options) (*Server, error) {
	h, err := NewHandler(opts)
	if err != nil {
		return nil, err
	}
	s, err := serve(socketPath, h)
	if err != nil {
		h.Close()
		return nil, err
	}
	return s, nil
}

// serve binds socketPath and serves h on it.
func serve(socketPath string, h *Handler) (*Server, error) {
	if _, err := os.Lstat(socketPath); err == nil {
		return nil, fmt.Errorf("Failed to open the API socket at: %s. Check that it is not already used: %w", socketPath, ErrSocketInUse)
	}
	bound, err := bindUnix(socketPath)
	if err != nil {
		return nil, fmt.Errorf("Failed to bind and run the HTTP server: IO error: %s: %w", osError(err), err)
	}
	s := &Server{h: h, path: socketPath, bound: bound, stopped: make(chan struct{}), cancel: make(chan struct{})}
	s.http = newHTTPServer(h)
	delay := h.opts.SocketDelay
	if h.opts.has(ModeSlowSocket) && delay < SlowSocketDelay {
		delay = SlowSocketDelay
	}
	if delay == 0 {
		if err := s.start(); err != nil {
			_ = os.Remove(socketPath)
			return nil, err
		}
	} else {
		go func() {
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
				_ = s.start()
			case <-s.cancel:
			}
		}()
	}
	go func() {
		select {
		case <-h.Done():
			s.stop()
		case <-s.stopped:
		}
	}()
	return s, nil
}

// start listens on the bound socket and serves requests.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	ln, err := s.bound.listen()
	s.bound = nil
	if err != nil {
		return err
	}
	if s.h.rel.atLeast(12) {
		s.h.log.info(threadMain, "Listening on API socket (%s).", rustDebugString(s.path))
		s.h.log.info(threadAPI, "API server started.")
	}
	s.ln = ln
	go s.http.serve(&limitListener{Listener: ln})
	return nil
}

// stop stops accepting and drops open connections.
func (s *Server) stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		if s.bound != nil {
			s.bound.close()
			s.bound = nil
		}
		if s.ln != nil {
			_ = s.ln.Close()
		}
		s.mu.Unlock()
		close(s.cancel)
		s.http.close()
		close(s.stopped)
	})
}

// Handler returns the server's handler, for its recorded requests and state.
func (s *Server) Handler() *Handler { return s.h }

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// Done is closed once the emulated Firecracker process has ended (or Close was called) and
// the socket no longer accepts connections.
func (s *Server) Done() <-chan struct{} { return s.stopped }

// Close stops the server, releases the VM's resources and removes the socket file. It is
// safe to call more than once.
func (s *Server) Close() error {
	s.stop()
	s.h.Close()
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove fake firecracker socket: %w", err)
	}
	return nil
}

// limitListener refuses connections beyond micro-http's limit with its raw 503.
type limitListener struct {
	net.Listener
	mu   sync.Mutex
	open int
}

const tooManyConnections = "HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\n" +
	"Content-Length: 40\r\n\r\n{ \"error\": \"Too many open connections\" }"

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.open >= maxConnections {
			l.mu.Unlock()
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, tooManyConnections)
			_ = c.Close()
			continue
		}
		l.open++
		l.mu.Unlock()
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
