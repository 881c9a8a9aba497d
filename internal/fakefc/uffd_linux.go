package fakefc

import (
	"encoding/json"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/uffd"
)

// guestMemory is the fake guest memory of a VM restored with a Uffd backend: anonymous
// memory registered with a userfaultfd, whose descriptor went to the handler as Firecracker
// sends it. The fake never touches the memory.
type guestMemory struct {
	mem  []byte
	uffd int
	conn *net.UnixConn // kept open from v1.14, as Firecracker leaks its end
}

// sendUffd does Firecracker's side of the Uffd handshake on conn for a guest of size bytes:
// it registers fresh memory with a userfaultfd and sends its regions (page_size from v1.12,
// page_size_kib, in bytes, always) with the descriptor.
func sendUffd(conn *net.UnixConn, size uint64, rel *release) (*guestMemory, error) {
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	f, err := uffd.New(base, size)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	region := jobj{{"base_host_virt_addr", base}, {"size", size}, {"offset", 0}}
	if rel.atLeast(12) {
		region = region.add("page_size", 4096)
	}
	region = region.add("page_size_kib", 4096)
	msg, _ := json.Marshal([]jobj{region})
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	if _, _, err := conn.WriteMsgUnix(msg, unix.UnixRights(fd), nil); err != nil {
		unix.Close(fd)
		unix.Munmap(mem)
		return nil, err
	}
	g := &guestMemory{mem: mem, uffd: fd}
	if rel.atLeast(14) {
		g.conn = conn
	} else {
		conn.Close()
	}
	return g, nil
}
