package fakefc

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/uffd"
)

// TestSendUffd: the fake's handshake is Firecracker's for the release: a userfaultfd with
// the regions, page_size from v1.12 (page_size_kib, in bytes, always), and the connection
// kept open from v1.14.
func TestSendUffd(t *testing.T) {
	for _, c := range []struct {
		version        string
		pageSize, kept bool
	}{{"1.7.0", false, false}, {"1.14.2", true, true}} {
		rel, err := loadRelease(c.version)
		if err != nil {
			t.Fatal(err)
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fcEnd, handler := unixConn(t, fds[0]), unixConn(t, fds[1])
		g, err := sendUffd(fcEnd, 2<<20, rel)
		if err != nil {
			t.Fatalf("%s: %v", c.version, err)
		}
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := handler.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			t.Fatalf("%s: %d control messages", c.version, len(msgs))
		}
		got, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: descriptors %v, %v", c.version, got, err)
		}
		if l, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(got[0])); l != "anon_inode:[userfaultfd]" {
			t.Errorf("%s: sent %q", c.version, l)
		}
		unix.Close(got[0])
		msg := string(buf[:n])
		if strings.Contains(msg, `"page_size":`) != c.pageSize || !strings.Contains(msg, `"page_size_kib":4096`) {
			t.Errorf("%s: regions %s", c.version, msg)
		}
		if rs, err := uffd.ParseRegions(buf[:n], 2<<20); err != nil || len(rs) != 1 || rs[0].Size != 2<<20 {
			t.Errorf("%s: regions %s: %+v, %v", c.version, msg, rs, err)
		}
		handler.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = handler.Read(buf)
		if closed := errors.Is(err, io.EOF); closed == c.kept || (g.conn != nil) != c.kept {
			t.Errorf("%s: read after the message: %v, want the connection kept %v", c.version, err, c.kept)
		}
		handler.Close()
		g.close()
	}
}

func unixConn(t *testing.T, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "pair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// close releases the memory, the userfaultfd and the connection.
func (g *guestMemory) close() {
	if g.conn != nil {
		g.conn.Close()
	}
	unix.Close(g.uffd)
	unix.Munmap(g.mem)
}
