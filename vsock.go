package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/internal/rundir"
)

// Firecracker's vsock device is "hybrid": the host side is a Unix socket, not AF_VSOCK
// (firecracker-notes §3.12). A host process connects to the device's socket and writes
// "CONNECT <port>\n"; Firecracker asks the guest, and answers "OK <hostport>\n" once the
// guest accepted, or closes the connection when nothing in the guest listens on the port.
// A guest connecting to the host (CID 2) on port P makes Firecracker connect to the Unix
// socket <socket>_P.

// The pause between two connection attempts of DialVsock doubles from the first to the most.
const (
	vsockDialFirstPause = 5 * time.Millisecond
	vsockDialMaxPause   = 100 * time.Millisecond
)

// maxConnectReply is the longest answer to CONNECT that DialVsock reads: "OK " and a u32.
const maxConnectReply = 32

// VsockSocket returns the host-side Unix socket of the VM's vsock device: MachineSpec.Vsock's
// path, or vsock.sock in the VM's directory. It returns an error wrapping ErrNoVsock when the
// VM has no vsock device.
func (m *Machine) VsockSocket() (string, error) {
	sock := vsockSocketOf(m.Spec(), m.paths)
	if sock == "" {
		return "", fmt.Errorf("vm %s: %w", m.name, ErrNoVsock)
	}
	return sock, nil
}

// vsockSocketOf is the vsock device's host socket of a VM with spec and paths; empty
// without a vsock device.
func vsockSocketOf(spec MachineSpec, paths rundir.Paths) string {
	switch {
	case spec.Vsock == nil:
		return ""
	case spec.Vsock.Path != "":
		return spec.Vsock.Path
	case paths.Vsock != "":
		return paths.Vsock
	}
	return filepath.Join(paths.Dir, rundir.VsockFile)
}

// FreeVsockCID returns the lowest guest CID (3 or more) that no VM in the runtime root uses,
// for a MachineSpec.Vsock. Firecracker's vsock is hybrid (a Unix socket on the host side), so
// CIDs need not be unique on the host; unique ones keep guests apart for tools that assume
// they are. Two VMs started at the same moment may get the same one.
func (mgr *Manager) FreeVsockCID(ctx context.Context) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("free vsock cid: %w", err)
	}
	states, _, err := mgr.root.States() // corrupt ones record nothing to trust
	if err != nil {
		return 0, fmt.Errorf("free vsock cid: %w", err)
	}
	used := make(map[uint32]bool)
	for _, st := range states {
		var spec MachineSpec
		if json.Unmarshal(st.Spec, &spec) == nil && spec.Vsock != nil {
			used[spec.Vsock.CID] = true
		}
	}
	cid := uint32(3)
	for used[cid] {
		cid++
	}
	return cid, nil
}

// DialVsock connects to port in the guest through the VM's vsock device and returns the
// connection once the guest has accepted it: the bytes read from it are the guest's, from
// its first one (nothing the guest sends right after accepting is lost).
//
// The connection is the *net.UnixConn to Firecracker. Firecracker ends a connection once the
// host side stops writing: after CloseWrite, what the guest still sends is dropped, so mark
// the end of the input in the protocol spoken over the connection, not with a half-close.
//
// A guest program's listener may not be up yet, so DialVsock tries again, with short pauses,
// while Firecracker turns the connection down (nothing listens on the port in the guest) or
// the guest does not answer, until ctx ends. ctx bounds the dial only, not the connection.
//
// Errors wrap ErrNoVsock when the VM has no vsock device, ErrPaused when the VM is paused
// (a paused guest cannot accept: resume it first), ErrNotRunning when the VM has ended, and,
// when ctx ends, ctx.Err() together with ErrNoVsockListener if Firecracker turned the last
// attempt down (the error then says that nobody listened on the port).
func (m *Machine) DialVsock(ctx context.Context, port uint32) (net.Conn, error) {
	sock, err := m.VsockSocket()
	if err != nil {
		return nil, fmt.Errorf("dial vsock port %d: %w", port, err)
	}
	fail := func(err error) error { return fmt.Errorf("dial vsock port %d of vm %s: %w", port, m.name, err) }
	begin := time.Now()
	pause := vsockDialFirstPause
	var refused *refusedError // the last attempt's, if Firecracker turned it down
	ended := func(attempt int, err error) error {
		if m.exited() {
			return fail(ErrNotRunning)
		}
		took := time.Since(begin).Round(time.Millisecond)
		if refused != nil {
			return fail(fmt.Errorf("%w (%d attempts in %v): %w", refused, attempt, took, ctx.Err()))
		}
		if errors.Is(err, errNoAnswer) {
			return fail(fmt.Errorf("the guest did not answer (is its vsock driver up?) after %d attempts in %v: %w", attempt, took, ctx.Err()))
		}
		return fail(err)
	}
	for attempt := 1; ; attempt++ {
		if err := m.checkDialable(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ended(attempt-1, err)
			}
			return nil, fail(err)
		}
		c, err := dialVsockOnce(ctx, sock, port)
		if err == nil {
			m.log.Debug("vsock connected", "port", port, "attempts", attempt, "took", time.Since(begin))
			return c, nil
		}
		switch {
		case errors.As(err, &refused):
		case ctx.Err() != nil:
			// An attempt that ctx's end cut short (no answer yet, or Firecracker's socket
			// not accepting yet on a loaded host) says nothing new: an earlier refusal stands.
			if !errors.Is(err, errNoAnswer) && !cutShort(err) {
				refused = nil
			}
			return nil, ended(attempt, err)
		case isSocketGone(err) && m.exitedSoon():
			return nil, fail(ErrNotRunning)
		default:
			return nil, fail(err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ended(attempt, err)
		case <-m.proc.Done():
			t.Stop()
			return nil, fail(ErrNotRunning)
		case <-t.C:
		}
		pause = min(2*pause, vsockDialMaxPause)
	}
}

// checkDialable refuses a dial into a VM that has ended or is paused.
func (m *Machine) checkDialable(ctx context.Context) error {
	if m.exited() {
		return ErrNotRunning
	}
	st, err := m.State(ctx)
	if err != nil {
		if m.exited() {
			return ErrNotRunning
		}
		return err
	}
	switch st {
	case StatePaused:
		return ErrPaused
	case StateExited:
		return ErrNotRunning
	}
	return nil
}

// exitedSoon reports whether the process has ended or ends within a moment: a vsock socket
// that refuses connections usually means that Firecracker is going.
func (m *Machine) exitedSoon() bool {
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-m.proc.Done():
		return true
	case <-t.C:
		return false
	}
}

// cutShort reports whether err is a deadline's or a cancellation's.
func cutShort(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func isSocketGone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}

// refusedError is a CONNECT that Firecracker turned down by closing the connection: nothing
// in the guest listens on the port.
type refusedError struct{ port uint32 }

func (e *refusedError) Error() string {
	return fmt.Sprintf("nobody listened on port %d in the guest", e.port)
}

func (e *refusedError) Is(target error) bool { return target == ErrNoVsockListener }

// errNoAnswer is a CONNECT that got no answer before ctx ended.
var errNoAnswer = errors.New("no answer")

// dialVsockOnce makes one connection through Firecracker's vsock socket. It reads the answer
// to CONNECT a byte at a time, so that no byte of the guest's is read along with it and the
// caller gets the *net.UnixConn itself.
func dialVsockOnce(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	// Firecracker reads the request with one non-blocking read: send it in one write.
	if _, err := io.WriteString(c, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		if isClosedByPeer(err) {
			return nil, &refusedError{port}
		}
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var line []byte
	var b [1]byte
	for {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > maxConnectReply {
				return nil, fmt.Errorf("unexpected answer to CONNECT: %q...", line)
			}
			continue
		}
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded):
			return nil, errNoAnswer
		case errors.Is(err, io.EOF) || isClosedByPeer(err):
			if len(line) > 0 {
				return nil, fmt.Errorf("connection closed after a partial answer to CONNECT: %q", line)
			}
			return nil, &refusedError{port}
		default:
			return nil, fmt.Errorf("read the answer to CONNECT: %w", err)
		}
	}
	if !stop() {
		// ctx ended just as the answer came: the deadline may be set, or about to be.
		return nil, errNoAnswer
	}
	hostPort, found := strings.CutPrefix(string(line), "OK ")
	if _, err := strconv.ParseUint(hostPort, 10, 32); !found || err != nil {
		return nil, fmt.Errorf("unexpected answer to CONNECT: %q", line)
	}
	ok = true
	return c, nil
}

func isClosedByPeer(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ListenVsock listens for connections that programs in the guest make to the host (CID 2)
// on port: Firecracker connects to the Unix socket <VsockSocket()>_<port>, which ListenVsock
// creates. Each accepted connection carries one guest connection, with no handshake to read.
// Only the VM's owner can reach a socket in the VM's directory (mode 0700); one next to a
// vsock path of the caller's gets the mode the umask gives, as Firecracker's own socket does
// (a chmod by path could be redirected by whoever can write that directory).
//
// Closing the listener removes the socket. So does the end of the VM: its listeners are then
// closed, and Accept returns an error wrapping net.ErrClosed (after Machine.Release, which
// stops watching the VM, the caller closes them). The socket of a listener whose process died
// is removed by reaping (Manager.Reap).
//
// Errors wrap ErrNoVsock when the VM has no vsock device, ErrNotRunning when the VM has
// ended, and ErrExists when a listener on the port is already open.
func (m *Machine) ListenVsock(port uint32) (net.Listener, error) {
	sock, err := m.VsockSocket()
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	fail := func(err error) error { return fmt.Errorf("listen on vsock port %d of vm %s: %w", port, m.name, err) }
	path := vsockPortSocket(sock, port)
	if len(path) > MaxSocketPath {
		return nil, fail(fmt.Errorf("socket path %s is %d bytes, more than the %d a Unix socket allows: use a shorter vsock path", path, len(path), MaxSocketPath))
	}
	m.vsockMu.Lock()
	defer m.vsockMu.Unlock()
	if m.vsockEnded || m.exited() {
		return nil, fail(ErrNotRunning)
	}
	if _, ok := m.vsockListeners[port]; ok {
		return nil, fail(fmt.Errorf("a listener on the port is open: %w", ErrExists))
	}
	// A socket left by a dead process (its listener never closed) would make the bind fail.
	if err := removeStaleSocket(path); err != nil {
		return nil, fail(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fail(fmt.Errorf("%s is in use by another process: %w", path, ErrExists))
		}
		return nil, fail(err)
	}
	if err := m.lendToJail(path); err != nil {
		ln.Close()
		return nil, fail(err)
	}
	l := &vsockListener{UnixListener: ln, m: m, port: port}
	if m.vsockListeners == nil {
		m.vsockListeners = make(map[uint32]*vsockListener)
	}
	m.vsockListeners[port] = l
	m.log.Debug("vsock listening", "port", port, "socket", path)
	return l, nil
}

// vsockPortSocket is the socket Firecracker connects to for guest connections to port.
func vsockPortSocket(sock string, port uint32) string {
	return sock + "_" + strconv.FormatUint(uint64(port), 10)
}

// closeVsockListeners closes the VM's vsock listeners once it has ended, and refuses new ones.
func (m *Machine) closeVsockListeners() {
	m.vsockMu.Lock()
	m.vsockEnded = true
	ls := make([]*vsockListener, 0, len(m.vsockListeners))
	for _, l := range m.vsockListeners {
		ls = append(ls, l)
	}
	m.vsockMu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}

// vsockListener is a ListenVsock listener; closing it removes its socket.
type vsockListener struct {
	*net.UnixListener
	m    *Machine
	port uint32
}

func (l *vsockListener) Close() error {
	l.m.vsockMu.Lock()
	if l.m.vsockListeners[l.port] == l {
		delete(l.m.vsockListeners, l.port)
	}
	l.m.vsockMu.Unlock()
	return l.UnixListener.Close()
}

// removeStaleVsockSockets removes the sockets of a dead VM's vsock listeners next to its
// vsock socket sock (<sock>_<port>), when nothing listens on them any more.
func removeStaleVsockSockets(sock string) error {
	dir, base := filepath.Split(sock)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		port, ok := strings.CutPrefix(e.Name(), base+"_")
		if !ok {
			continue
		}
		if _, err := strconv.ParseUint(port, 10, 32); err != nil {
			continue
		}
		errs = append(errs, removeStaleSocket(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
