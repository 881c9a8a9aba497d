package fakefc

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// Firecracker's vsock backend, as the host sees it (firecracker-notes §3.12): a Unix
// listener on uds_path. A host connection sends "CONNECT <port>\n"; once the guest accepts,
// Firecracker answers "OK <local port>\n" and relays bytes both ways; when nothing in the
// guest listens, the guest resets the connection and Firecracker closes it. A guest
// connection to the host on port P makes Firecracker connect to uds_path_P.
//
// Until the guest's driver has activated the device, Firecracker does not read the host's
// connections at all, so a CONNECT then waits. A guest that does not answer a request
// within connRequestTimeout (a paused one) has the connection closed.

const (
	// connRequestTimeout is Firecracker's CONN_REQUEST_TIMEOUT_MS.
	connRequestTimeout = 2 * time.Second
	// connectMinRead and connectMaxRead are how much of the CONNECT line Firecracker reads:
	// at least len("connect 0\n"), then a byte at a time up to a newline or 32 bytes.
	connectMinRead = 10
	connectMaxRead = 32
	// connectReadTimeout stands for Firecracker reading the line without blocking: a line
	// that does not arrive at once fails.
	connectReadTimeout = 100 * time.Millisecond
	// vsockPoll is how often a waiting connection looks at the guest again.
	vsockPoll = 2 * time.Millisecond
	// firstLocalPort is the first host-side port Firecracker allocates (1 << 30).
	firstLocalPort = 1 << 30
)

// vsockDev is the vsock device's host side.
type vsockDev struct {
	uds     string
	ln      *net.UnixListener
	forward map[uint32]string // Options.VsockForward

	mu        sync.Mutex
	guest     *guest // the running guest, once booted or restored
	closed    bool
	conns     map[net.Conn]struct{}
	localPort uint32 // the last allocated, as Firecracker's local_port_last
	done      chan struct{}
}

func newVsockDev(uds string, ln *net.UnixListener, forward map[uint32]string) *vsockDev {
	d := &vsockDev{uds: uds, ln: ln, forward: forward, conns: make(map[net.Conn]struct{}), localPort: firstLocalPort - 1, done: make(chan struct{})}
	go d.serve()
	return d
}

// setGuest connects the device to the guest that drives it.
func (d *vsockDev) setGuest(g *guest) {
	d.mu.Lock()
	d.guest = g
	d.mu.Unlock()
}

// close ends the device with the process: the listener and every connection close; the
// socket file stays, as Firecracker never removes it.
func (d *vsockDev) close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	close(d.done)
	conns := make([]net.Conn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	_ = d.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
}

// track registers a connection to close with the device; false once the device is closed.
func (d *vsockDev) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *vsockDev) untrack(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
	_ = c.Close()
}

func (d *vsockDev) allocPort() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.localPort = (d.localPort+1)&^(1<<31) | (1 << 30)
	return d.localPort
}

// vsockPeer is what the guest's driver does with connections.
type vsockPeer int

const (
	peerInactive vsockPeer = iota // no driver (yet): the device is not activated
	peerRefuses                   // a driver, but nothing listens: every request is reset
	peerEchoes                    // the vsock-echo guest
)

// guestNow returns the guest and what it does with vsock connections.
func (d *vsockDev) guestNow() (*guest, vsockPeer) {
	d.mu.Lock()
	g := d.guest
	d.mu.Unlock()
	if g == nil {
		return nil, peerInactive
	}
	return g, g.vsockPeer()
}

// wait sleeps a poll interval; false once the device is closed.
func (d *vsockDev) wait() bool {
	t := time.NewTimer(vsockPoll)
	defer t.Stop()
	select {
	case <-d.done:
		return false
	case <-t.C:
		return true
	}
}

func (d *vsockDev) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		if !d.track(c) {
			_ = c.Close()
			return
		}
		go d.hostConn(c)
	}
}

// hostConn serves one host-initiated connection.
func (d *vsockDev) hostConn(c net.Conn) {
	defer d.untrack(c)
	g, peer := d.guestNow()
	for peer == peerInactive {
		if !d.wait() {
			return
		}
		g, peer = d.guestNow()
	}
	port, ok := readConnect(c)
	if !ok {
		return
	}
	// Firecracker allocates the host-side port before it asks the guest.
	local := d.allocPort()
	path, forwarded := d.forward[port]
	if !forwarded && (peer == peerRefuses || port != testguest.VsockEchoPort) {
		return // the guest resets the request
	}
	// The guest answers once it runs; a paused guest lets the request time out.
	deadline := time.Now().Add(connRequestTimeout)
	for !g.running() {
		if g.ended() || time.Now().After(deadline) || !d.wait() {
			return
		}
	}
	var peerConn net.Conn
	if forwarded {
		var err error
		if peerConn, err = net.Dial("unix", path); err != nil {
			return // nothing listens on the port: the guest resets the request
		}
		if !d.track(peerConn) {
			_ = peerConn.Close()
			return
		}
		defer d.untrack(peerConn)
	}
	if _, err := io.WriteString(c, "OK "+strconv.FormatUint(uint64(local), 10)+"\n"); err != nil {
		return
	}
	if forwarded {
		relay(c, peerConn)
		return
	}
	d.echo(c, g)
}

// relay copies between a and b until either side ends, then closes both: Firecracker ends
// the whole connection when either side stops.
func relay(a, b net.Conn) {
	done := make(chan struct{}, 2)
	for _, p := range [][2]net.Conn{{a, b}, {b, a}} {
		go func() {
			_, _ = io.Copy(p[0], p[1])
			done <- struct{}{}
		}()
	}
	<-done
	_ = a.Close()
	_ = b.Close()
	<-done
}

// ParseVsockForward reads EnvVsockForward's format, comma-separated PORT=PATH pairs, into an
// Options.VsockForward.
func ParseVsockForward(s string) (map[uint32]string, error) {
	m := make(map[uint32]string)
	for _, pair := range strings.Split(s, ",") {
		port, path, ok := strings.Cut(strings.TrimSpace(pair), "=")
		n, err := strconv.ParseUint(port, 10, 32)
		if !ok || err != nil || path == "" {
			return nil, fmt.Errorf("%q: want PORT=PATH, such as 1024=/tmp/agent.sock", pair)
		}
		m[uint32(n)] = path
	}
	return m, nil
}

// echo sends back every byte read from c while the guest runs, until c ends.
func (d *vsockDev) echo(c net.Conn, g *guest) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			for !g.running() {
				if g.ended() || !d.wait() {
					return
				}
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// readConnect reads the CONNECT line as Firecracker does and returns its port.
func readConnect(c net.Conn) (uint32, bool) {
	_ = c.SetReadDeadline(time.Now().Add(connectReadTimeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, connectMaxRead)
	if _, err := io.ReadFull(c, buf[:connectMinRead]); err != nil {
		return 0, false
	}
	n := connectMinRead
	for buf[n-1] != '\n' && n < len(buf) {
		if _, err := io.ReadFull(c, buf[n:n+1]); err != nil {
			return 0, false
		}
		n++
	}
	words := strings.Fields(string(buf[:n]))
	if len(words) < 2 || strings.ToLower(words[0]) != "connect" {
		return 0, false
	}
	port, err := strconv.ParseUint(words[1], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(port), true
}

// callBack is the vsock-echo guest calling the host on VsockEchoPort: Firecracker connects
// to uds_path_52; while nothing listens there the guest tries again every
// VsockCallbackPause; an established connection echoes, and once it ends the guest calls
// again.
func (d *vsockDev) callBack(g *guest) {
	path := d.uds + "_" + strconv.Itoa(testguest.VsockEchoPort)
	for {
		// Polled, not waitRunning: the guest's own goroutine takes its wake-ups.
		for !g.running() {
			if g.ended() || !d.wait() {
				return
			}
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			if !d.track(c) {
				_ = c.Close()
				return
			}
			g.setCalledBack(true)
			d.echo(c, g)
			d.untrack(c)
			g.setCalledBack(false)
		}
		t := time.NewTimer(testguest.VsockCallbackPause)
		select {
		case <-d.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
}
