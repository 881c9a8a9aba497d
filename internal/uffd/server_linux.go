package uffd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/memfile"
)

// Options configure a Server.
type Options struct {
	// Log gets the server's debug messages and the faults it cannot serve. Default: none.
	Log *slog.Logger
	// Prefault holds memory-file offsets of pages (a working set, see Server.WorkingSet) that
	// are copied into each VM as soon as it connects, before it faults on them. Offsets
	// outside the guest's regions are skipped.
	Prefault []int64
}

// handshakeTimeout bounds waiting for a connected Firecracker's handshake.
const handshakeTimeout = 10 * time.Second

// Server serves the page faults of the VMs restored from one memory file. It maps the file
// once, read-only; the file must not change while the Server is open.
type Server struct {
	file     *os.File
	mem      []byte
	size     int64
	data     extents
	prefault []int64
	log      *slog.Logger
	stop     int // eventfd, readable once Close begins

	zeroOnce sync.Once
	zero     []byte // a huge page of zeros, for regions whose pages UFFDIO_ZEROPAGE cannot fill
	zeroErr  error

	wg      sync.WaitGroup
	mu      sync.Mutex
	closed  bool
	clients int
	seen    []uint64 // bitmap of the file's 4 KiB pages served from the file
	order   []int64  // their offsets, in the order first served
}

// Open maps the memory file f and returns a Server for it. The Server owns f from then on,
// also when Open fails.
func Open(f *os.File, opts Options) (*Server, error) {
	s, err := open(f, opts)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("uffd server for %s: %w", f.Name(), err)
	}
	return s, nil
}

func open(f *os.File, opts Options) (*Server, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() <= 0 || fi.Size()%smallPage != 0 {
		return nil, fmt.Errorf("memory file is not a regular file of whole pages (%d bytes, %s)", fi.Size(), fi.Mode().Type())
	}
	if fi.Size() > int64(^uint(0)>>1) {
		return nil, fmt.Errorf("memory file of %d bytes is too large to map", fi.Size())
	}
	data, err := dataExtents(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("find the data of the memory file: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the memory file: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		file: f, mem: mem, size: fi.Size(), data: data, stop: stop, log: log,
		prefault: opts.Prefault,
		seen:     make([]uint64, (fi.Size()/smallPage+63)/64),
	}, nil
}

// dataExtents lists the data ranges of f (memfile.Extents), as the server keeps them. Past
// memfile.MaxExtents of them the whole file is served as data: correct, only without the
// zero-page shortcut for its holes.
func dataExtents(f *os.File, size int64) (extents, error) {
	ext, err := memfile.Extents(f, size)
	if errors.Is(err, memfile.ErrTooManyExtents) {
		return extents{{Off: 0, Len: size}}, nil
	}
	if err != nil {
		return nil, err
	}
	return ext, nil
}

// Clients returns the number of VMs the server is serving.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clients
}

// WorkingSet returns the memory-file offsets of the pages served from the file so far, to
// all VMs, in the order first served: Options.Prefault of a later Server.
func (s *Server) WorkingSet() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.order...)
}

// Accept waits, while ctx allows, for one Firecracker to connect to ln, takes its
// handshake and serves its faults until it exits or the server closes.
func (s *Server) Accept(ctx context.Context, ln *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { ln.SetDeadline(time.Now()) })
	defer stop()
	conn, err := ln.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("wait for firecracker to connect: %w", ctx.Err())
		}
		return fmt.Errorf("wait for firecracker to connect: %w", err)
	}
	defer conn.Close()
	return s.Serve(conn)
}

// Serve takes the handshake of the Firecracker connected on conn and serves its faults, in
// a goroutine, until it exits or the server closes. Errors wrap ErrHandshake when the
// handshake is not one Firecracker sends; the connection stays the caller's.
func (s *Server) Serve(conn *net.UnixConn) error {
	c, err := s.handshake(conn)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.close()
		return fmt.Errorf("uffd server: %w", net.ErrClosed)
	}
	s.clients++
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		err := c.serve()
		c.close()
		s.mu.Lock()
		s.clients--
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("uffd client ended", "pid", c.pid, "err", err)
		} else {
			s.log.Debug("uffd client ended", "pid", c.pid, "faults", c.faults)
		}
	}()
	return nil
}

// Close stops serving every VM (one still running then hangs on its next fault) and unmaps
// the file. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var one [8]byte
	one[0] = 1
	unix.Write(s.stop, one[:])
	s.wg.Wait()
	err := unix.Munmap(s.mem)
	if s.zero != nil {
		err = errors.Join(err, unix.Munmap(s.zero))
	}
	unix.Close(s.stop)
	return errors.Join(err, s.file.Close())
}

// client is one Firecracker being served.
type client struct {
	s       *Server
	uffd    int
	pidfd   int
	pid     int
	regions []Region
	removed [][]uint64 // per region, bitmap of pages the balloon removed
	faults  int
}

func (c *client) close() {
	unix.Close(c.uffd)
	unix.Close(c.pidfd)
}

// handshake reads the regions and the userfaultfd from conn and checks them.
func (s *Server) handshake(conn *net.UnixConn) (c *client, err error) {
	var fds []int
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n := 0
	for {
		m, oobn, _, _, rerr := conn.ReadMsgUnix(buf[n:], oob)
		n += m
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				return nil, fmt.Errorf("%w: %w", ErrHandshake, perr)
			}
		}
		if n > 0 && jsonDone(buf[:n]) {
			break
		}
		if errors.Is(rerr, io.EOF) || (rerr == nil && m == 0) {
			return nil, fmt.Errorf("%w: the connection closed after %d bytes", ErrHandshake, n)
		}
		if rerr != nil {
			return nil, fmt.Errorf("read the uffd handshake: %w", rerr)
		}
		if n > MaxMessage {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrHandshake, MaxMessage)
		}
	}
	if len(fds) != 1 {
		return nil, fmt.Errorf("%w: %d file descriptors, want the userfaultfd alone", ErrHandshake, len(fds))
	}
	if l, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fds[0])); l != "anon_inode:[userfaultfd]" {
		return nil, fmt.Errorf("%w: the descriptor sent is %q, not a userfaultfd", ErrHandshake, l)
	}
	regions, err := ParseRegions(buf[:n], s.size)
	if err != nil {
		return nil, err
	}
	pid, err := peerPID(conn)
	if err != nil {
		return nil, err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("watch firecracker pid %d: %w", pid, err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	c = &client{s: s, uffd: fds[0], pidfd: pidfd, pid: pid, regions: regions}
	for _, r := range regions {
		c.removed = append(c.removed, make([]uint64, (r.Size/r.PageSize+63)/64))
	}
	fds = nil
	return c, nil
}

// jsonDone reports whether b is a whole JSON array: the handshake's end.
func jsonDone(b []byte) bool {
	var v []json.RawMessage
	return json.Valid(b) && json.Unmarshal(b, &v) == nil
}

// parseRights returns the descriptors passed in the control messages oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue // not SCM_RIGHTS
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func peerPID(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	if cred.Pid <= 0 {
		return 0, fmt.Errorf("%w: the peer has no pid in this namespace", ErrHandshake)
	}
	return int(cred.Pid), nil
}

// errGone ends a client whose process has exited.
var errGone = errors.New("firecracker exited")

// serve prefaults the working set, then serves events until Firecracker exits or the server
// closes.
func (c *client) serve() error {
	if err := c.prefault(); err != nil {
		return c.end(err)
	}
	fds := []unix.PollFd{{Fd: int32(c.uffd), Events: unix.POLLIN}, {Fd: int32(c.pidfd), Events: unix.POLLIN}, {Fd: int32(c.s.stop), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents, fds[2].Revents = 0, 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if fds[2].Revents != 0 {
			return nil
		}
		if fds[0].Revents != 0 {
			if err := c.drain(); err != nil {
				return c.end(err)
			}
		}
		if fds[1].Revents != 0 {
			return nil
		}
	}
}

// end turns the error that Firecracker's exit causes into a plain end.
func (c *client) end(err error) error {
	if errors.Is(err, errGone) {
		return nil
	}
	return err
}

// drain handles the events pending on the userfaultfd.
func (c *client) drain() error {
	var buf [64 * msgSize]byte
	for {
		n, err := unix.Read(c.uffd, buf[:])
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read userfaultfd: %w", err)
		}
		if n == 0 {
			return errGone
		}
		// Removes first: a fault read in the same batch after a remove must see it.
		for i := 0; i+msgSize <= n; i += msgSize {
			if m := decodeMsg(buf[i:]); m.Event == eventRemove {
				c.remove(m.Arg0, m.Arg1)
			}
		}
		for i := 0; i+msgSize <= n; i += msgSize {
			m := decodeMsg(buf[i:])
			switch m.Event {
			case eventPagefault:
				if err := c.fault(m.Arg1); err != nil {
					return err
				}
			case eventRemove, eventUnmap, eventRemap, eventFork:
				// Removes are recorded above; Firecracker neither forks nor remaps guest
				// memory, and unmaps it only as it exits.
			default:
				c.s.log.Warn("unknown userfaultfd event", "pid", c.pid, "event", m.Event)
			}
		}
	}
}

// remove records that the balloon dropped [start, end): later faults there get zero pages.
func (c *client) remove(start, end uint64) {
	for i, r := range c.regions {
		lo, hi := max(start, r.Base), min(end, r.Base+r.Size)
		if lo >= hi {
			continue
		}
		for p := (lo - r.Base) / r.PageSize; p < (hi-r.Base+r.PageSize-1)/r.PageSize; p++ {
			c.removed[i][p/64] |= 1 << (p % 64)
		}
	}
}

// fault fills the page at addr.
func (c *client) fault(addr uint64) error {
	c.faults++
	for tries := 0; ; tries++ {
		err := c.fill(addr)
		switch {
		case err == nil, errors.Is(err, unix.EEXIST):
			return nil // EEXIST: already there (a prefault, or a fault reported twice)
		case errors.Is(err, unix.EAGAIN) && tries < 100:
			// The mappings changed under the copy (a remove in flight): take its event,
			// then try again.
			if err := c.drainRemoves(); err != nil {
				return err
			}
		case errors.Is(err, unix.ESRCH), errors.Is(err, unix.ENOENT):
			// The process, or its guest memory mapping, is gone: Firecracker is exiting.
			return errGone
		default:
			return fmt.Errorf("fill page %#x: %w", addr, err)
		}
	}
}

// drainRemoves reads pending events while a copy is retried; faults among them are served
// at once.
func (c *client) drainRemoves() error {
	err := c.drain()
	time.Sleep(time.Microsecond)
	return err
}

// fill copies in the page at addr from the file, or maps zeros where the file has a hole or
// the balloon removed the page.
func (c *client) fill(addr uint64) error {
	i, r, ok := c.region(addr)
	if !ok {
		return fmt.Errorf("fault at %#x, outside the guest's regions", addr)
	}
	p := (addr - r.Base) / r.PageSize
	page := r.Base + p*r.PageSize
	off := int64(r.Offset + p*r.PageSize)
	if c.removed[i][p/64]&(1<<(p%64)) != 0 || !c.s.data.data(off, int64(r.PageSize)) {
		return c.zero(page, r.PageSize)
	}
	// Recorded first: the copy wakes the guest, which may ask for the working set at once.
	c.s.record(off, int64(r.PageSize))
	return copyPage(c.uffd, page, unsafe.Pointer(&c.s.mem[off]), r.PageSize)
}

func (c *client) zero(page, size uint64) error {
	if size == smallPage {
		return zeroPage(c.uffd, page, size)
	}
	// UFFDIO_ZEROPAGE does not fill huge pages: copy zeros.
	s := c.s
	s.zeroOnce.Do(func() {
		s.zero, s.zeroErr = unix.Mmap(-1, 0, hugePage, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	})
	if s.zeroErr != nil {
		return s.zeroErr
	}
	return copyPage(c.uffd, page, unsafe.Pointer(&s.zero[0]), size)
}

func (c *client) region(addr uint64) (int, Region, bool) {
	i := find(c.regions, addr)
	if i < 0 {
		return 0, Region{}, false
	}
	return i, c.regions[i], true
}

// record notes the pages of [off, off+n) as served from the file.
func (s *Server) record(off, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := off / smallPage; p < (off+n)/smallPage; p++ {
		if s.seen[p/64]&(1<<(p%64)) == 0 {
			s.seen[p/64] |= 1 << (p % 64)
			if p == off/smallPage {
				s.order = append(s.order, off)
			}
		}
	}
}

// prefault copies the working set in, serving pending faults every few pages so that the
// VM never waits behind it.
func (c *client) prefault() error {
	for n, off := range c.s.prefault {
		if n%64 == 0 {
			if err := c.drain(); err != nil {
				return err
			}
		}
		for _, r := range c.regions {
			if off < 0 || uint64(off) < r.Offset || uint64(off) >= r.Offset+r.Size {
				continue
			}
			addr := r.Base + (uint64(off)-r.Offset)/r.PageSize*r.PageSize
			if err := c.fault(addr); err != nil {
				return err
			}
			c.faults--
			break
		}
	}
	return nil
}
