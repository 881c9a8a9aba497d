package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const pages = 16

// memFile writes a sparse memory file of 16 pages where page i holds byte i+1 when data[i].
func memFile(t *testing.T, data func(i int) bool) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "vm.mem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(pages * smallPage); err != nil {
		t.Fatal(err)
	}
	for i := range pages {
		if data(i) {
			if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, smallPage), int64(i*smallPage)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// guest stands in for Firecracker's side: anonymous memory registered with a userfaultfd.
type guest struct {
	mem  []byte
	uffd *os.File
}

func newGuest(t *testing.T) *guest {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, pages*smallPage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	f, err := New(uint64(uintptr(unsafe.Pointer(&mem[0]))), uint64(len(mem)))
	if err != nil {
		t.Skipf("no userfaultfd here: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return &guest{mem: mem, uffd: f}
}

func (g *guest) regions() string {
	return fmt.Sprintf(`[{"base_host_virt_addr":%d,"size":%d,"offset":0,"page_size":4096,"page_size_kib":4096}]`,
		uintptr(unsafe.Pointer(&g.mem[0])), len(g.mem))
}

// handshake sends msg and fds as Firecracker does, on a fresh connection served by s.
func handshake(t *testing.T, s *Server, msg string, fds ...int) error {
	t.Helper()
	a, b, err := unixPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := a.WriteMsgUnix([]byte(msg), oob, nil); err != nil {
		t.Fatal(err)
	}
	a.CloseWrite()
	return s.Serve(b)
}

func unixPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, _ := net.FileConn(f)
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1]), nil
}

// read copies page i of the guest's memory through a pipe: the kernel takes the fault in a
// system call, so the Go scheduler runs the server meanwhile.
func (g *guest) read(t *testing.T, i int) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(g.mem[i*smallPage : (i+1)*smallPage])
		w.Close()
		done <- err
	}()
	got := make([]byte, smallPage)
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("read page %d: %v", i, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return got
}

func page(b byte) []byte { return bytes.Repeat([]byte{b}, smallPage) }

func TestServer(t *testing.T) {
	even := func(i int) bool { return i%2 == 0 }
	s, err := Open(memFile(t, even), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g := newGuest(t)
	if err := handshake(t, s, g.regions(), int(g.uffd.Fd())); err != nil {
		t.Fatal(err)
	}
	if s.Clients() != 1 {
		t.Fatalf("clients %d", s.Clients())
	}
	if got := g.read(t, 2); !bytes.Equal(got, page(3)) {
		t.Errorf("data page: %v...", got[:8])
	}
	if got := g.read(t, 3); !bytes.Equal(got, page(0)) {
		t.Errorf("hole page: %v...", got[:8])
	}
	// The balloon drops page 4 (data in the file) before the guest touches it, and page 2
	// after: both read back as zeros.
	if err := unix.Madvise(g.mem[2*smallPage:5*smallPage], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{2, 4} {
		if got := g.read(t, i); !bytes.Equal(got, page(0)) {
			t.Errorf("removed page %d: %v...", i, got[:8])
		}
	}
	if got := g.read(t, 6); !bytes.Equal(got, page(7)) {
		t.Errorf("data page after a remove: %v...", got[:8])
	}
	if ws := s.WorkingSet(); !slices.Equal(ws, []int64{2 * smallPage, 6 * smallPage}) {
		t.Errorf("working set %v", ws)
	}

	// A second guest of the same file, prefaulted with a working set: its pages are there
	// before it touches them.
	s2, err := Open(memFile(t, even), Options{Prefault: []int64{8 * smallPage, 10 * smallPage, 1 << 40, -4096}})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	g2 := newGuest(t)
	if err := handshake(t, s2, g2.regions(), int(g2.uffd.Fd())); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !resident(t, g2.mem, 8) || !resident(t, g2.mem, 10) {
		if time.Now().After(deadline) {
			t.Fatal("the working set was not prefaulted")
		}
		time.Sleep(time.Millisecond)
	}
	if resident(t, g2.mem, 12) {
		t.Error("a page outside the working set is resident")
	}
	if got := g2.read(t, 10); !bytes.Equal(got, page(11)) {
		t.Errorf("prefaulted page: %v...", got[:8])
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, s2, g.regions(), int(g.uffd.Fd())); err == nil {
		t.Error("a closed server took a client")
	}
}

func resident(t *testing.T, mem []byte, i int) bool {
	var vec [1]byte
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[i*smallPage])), smallPage, uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	return vec[0]&1 != 0
}

// TestHandshakeRefusals sends what Firecracker never sends: each is refused, and the server
// keeps no descriptor of it.
func TestHandshakeRefusals(t *testing.T) {
	s, err := Open(memFile(t, func(int) bool { return true }), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g := newGuest(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fd := int(g.uffd.Fd())
	beyond := strings.Replace(g.regions(), `"offset":0`, `"offset":4096`, 1)
	for _, c := range []struct {
		name, msg string
		fds       []int
		want      string
	}{
		{"no descriptor", g.regions(), nil, "0 file descriptors"},
		{"two descriptors", g.regions(), []int{fd, fd}, "2 file descriptors"},
		{"not a userfaultfd", g.regions(), []int{int(r.Fd())}, "not a userfaultfd"},
		{"bad json", `[{"base_host_virt_addr":`, []int{fd}, "closed after"},
		{"region past the file", beyond, []int{fd}, "beyond the end"},
		{"not regions", `{"a":1}`, []int{fd}, "closed after"},
	} {
		before := openFDs(t)
		err := handshake(t, s, c.msg, c.fds...)
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrHandshake with %q", c.name, err, c.want)
		}
		if after := openFDs(t); after != before {
			t.Errorf("%s: %d descriptors open after, %d before", c.name, after, before)
		}
	}
	if s.Clients() != 0 {
		t.Errorf("clients %d", s.Clients())
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
