package smartvm

import (
	"context"
	"io/fs"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// hostileStatAgent serves the agent's Stat procedure on a Unix socket, answering every call
// with answer(path), and returns a client of it.
func hostileStatAgent(t *testing.T, answer func(p string) agentwire.FileInfo) *Agent {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(agentwire.ProcStat, connect.NewUnaryHandler(agentwire.ProcStat,
		func(_ context.Context, req *connect.Request[agentwire.PathRequest]) (*connect.Response[agentwire.FileInfo], error) {
			fi := answer(req.Msg.Path)
			return connect.NewResponse(&fi), nil
		}, connect.WithCodec(agentwire.Codec{})))
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a, err := DialAgent("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestAgentStatGuestAnswer: what Stat returns is the guest's answer, checked: a name other
// than the path's last element, a negative size, an owner no file has, or a link target that
// is too long or on a file that is no symlink is refused; a symlink target's control
// characters are escaped and the answer otherwise passed on.
func TestAgentStatGuestAnswer(t *testing.T) {
	ctx := context.Background()
	honest := func(p string) agentwire.FileInfo {
		return agentwire.FileInfo{Name: path.Base(p), Size: 3, Mode: 0o644, UID: 1000, GID: 1000}
	}
	for _, tc := range []struct {
		name string
		edit func(*agentwire.FileInfo)
		want string
	}{
		{"escape in name", func(fi *agentwire.FileInfo) { fi.Name = "f\x1b]0;owned\x07" }, `describes "f\\x1b]0;owned\\x07", not "f"`},
		{"long name", func(fi *agentwire.FileInfo) { fi.Name = strings.Repeat("n", 1<<20) }, `not "f"`},
		{"other name", func(fi *agentwire.FileInfo) { fi.Name = "g" }, `describes "g", not "f"`},
		{"negative size", func(fi *agentwire.FileInfo) { fi.Size = -1 }, "a size of -1 bytes"},
		{"owner", func(fi *agentwire.FileInfo) { fi.UID = -5 }, "owner -5:1000"},
		{"link on a file", func(fi *agentwire.FileInfo) { fi.Link = "/etc" }, "not a symlink"},
		{"long link", func(fi *agentwire.FileInfo) {
			fi.Mode, fi.Link = fs.ModeSymlink|0o777, strings.Repeat("l", agentwire.MaxLinkTarget+1)
		}, "a link target of 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := hostileStatAgent(t, func(p string) agentwire.FileInfo {
				fi := honest(p)
				tc.edit(&fi)
				return fi
			})
			fi, err := a.Stat(ctx, "/d/f")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "the agent is broken or not smartvm's") {
				t.Fatalf("Stat: %+v, %v; want an error with %q", fi, err, tc.want)
			}
			if len(err.Error()) > 2*agentwire.MaxGuestText || strings.ContainsAny(err.Error(), "\x1b\x07") {
				t.Errorf("the error passes the guest's text on unchecked: %.200q", err)
			}
		})
	}
	a := hostileStatAgent(t, func(p string) agentwire.FileInfo {
		fi := honest(p)
		fi.Mode, fi.Link = fs.ModeSymlink|0o777, "/target\x1b[2J\r\n"
		return fi
	})
	fi, err := a.Stat(ctx, "/d/link")
	if err != nil || fi.Name != "link" || fi.Link != `/target\x1b[2J\x0d\x0a` || fi.UID != 1000 {
		t.Errorf("Stat of a symlink: %+v, %v; want its target escaped", fi, err)
	}
	if fi, err := a.Stat(ctx, "/"); err != nil || fi.Name != "/" {
		t.Errorf("Stat /: %+v, %v", fi, err)
	}
}
