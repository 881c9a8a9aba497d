package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// makeTree writes a small tree with modes, owners, times, a symlink and a hard link.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	files := []struct {
		name     string
		mode     fs.FileMode
		uid, gid int
		data     string
	}{
		{"tree/a.txt", 0o640, 1000, 1000, "alpha\n"},
		{"tree/sub/b.sh", 0o755, 0, 10, "#!/bin/sh\necho b\n"},
		{"tree/sub/setuid", 0o4755 | fs.ModeSetuid, 0, 0, "x"},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode&fs.ModePerm|f.mode&fs.ModeSetuid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.txt", filepath.Join(dir, "tree/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "tree/a.txt"), filepath.Join(dir, "tree/sub/hard")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"tree/sub", "tree"} {
		if err := os.Chtimes(filepath.Join(dir, d), mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
}

// describe lists a tree's entries with type, mode, owner, mtime, size and link target.
func describe(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(root, p)
		target, _ := os.Readlink(p)
		mtime := fi.ModTime().Unix()
		if fi.Mode()&fs.ModeSymlink != 0 {
			mtime = 0 // symlink times are not kept
		}
		size := fi.Size()
		if fi.IsDir() {
			size = 0
		}
		b.WriteString(strings.Join([]string{rel, fi.Mode().String(), strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid)), strconv.Itoa(int(mtime)), strconv.Itoa(int(size)), target, strconv.Itoa(int(st.Nlink))}, " ") + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// treeAgent starts an agent in namespaces and makes a tree (makeTree) to copy, in the
// directory it returns.
func treeAgent(t *testing.T) (*nsAgent, context.Context, string) {
	t.Helper()
	a := startNSAgent(t, makeRootfs(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	src := t.TempDir()
	makeTree(t, src)
	return a, ctx, src
}

func TestCopyTreeInAndOut(t *testing.T) {
	a, ctx, src := treeAgent(t)
	want := describe(t, filepath.Join(src, "tree"))

	// Into an existing directory: the tree keeps its name.
	if err := a.client.CopyTo(ctx, filepath.Join(src, "tree"), "/data", agentwire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(a.rootfs, "data/tree")); got != want {
		t.Errorf("tree in the guest:\n%s\nwant:\n%s", got, want)
	}
	// To a new name.
	if err := a.client.CopyTo(ctx, filepath.Join(src, "tree"), "/data/renamed", agentwire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(a.rootfs, "data/renamed")); got != want {
		t.Errorf("renamed tree in the guest:\n%s\nwant:\n%s", got, want)
	}
	stdout, _, _ := a.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", "cat /data/tree/link; /data/tree/sub/b.sh"}}, "")
	if stdout != "alpha\nb\n" {
		t.Errorf("reading the copied tree in the guest: %q", stdout)
	}

	// And out again, with owners.
	out := t.TempDir()
	if err := a.client.CopyFrom(ctx, "/data/tree", out, true, agentwire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(out, "tree")); got != want {
		t.Errorf("tree copied out:\n%s\nwant:\n%s", got, want)
	}
	// To a new local name, without owners: setuid is dropped.
	if err := a.client.CopyFrom(ctx, "/data/tree/sub/setuid", filepath.Join(out, "plain"), false, agentwire.Limits{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(out, "plain")); err != nil || fi.Mode() != 0o755 {
		t.Errorf("file copied out without owners: mode %v, err %v; want -rwxr-xr-x", fi.Mode(), err)
	}
}

func TestCopyBadInput(t *testing.T) {
	rootfs := makeRootfs(t)
	a := startNSAgent(t, rootfs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := filepath.Join(t.TempDir(), "f.txt")
	if err := os.WriteFile(src, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	err := a.client.CopyTo(ctx, src, "/missing/dir/f.txt", agentwire.Limits{})
	if err == nil || !strings.Contains(err.Error(), "/missing/dir does not exist in the guest") {
		t.Errorf("copy to a missing directory: %v", err)
	}
	err = a.client.CopyFrom(ctx, "/data/nothing", t.TempDir(), false, agentwire.Limits{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("copy a missing guest file: %v, want fs.ErrNotExist", err)
	}
	err = a.client.CopyFrom(ctx, "/data", filepath.Join(t.TempDir(), "no/such/dir"), false, agentwire.Limits{})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("copy to a missing local directory: %v", err)
	}
	for _, p := range []string{"/data/../etc/passwd", "data/x", "/data/x/.."} {
		if _, err := a.client.Stat(ctx, p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("stat %q: %v, want an error naming the path", p, err)
		}
		if err := a.client.CopyTo(ctx, src, p, agentwire.Limits{}); err == nil {
			t.Errorf("copy to %q succeeded", p)
		}
	}

	// A tar stream with ".." or an absolute name is refused, and writes nothing outside.
	for _, name := range []string{"../escape.txt", "ok/../../escape.txt", "/escape.txt"} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
		_, _ = tw.Write([]byte("x"))
		_ = tw.Close()
		_, err := a.client.Upload(ctx, "/data", agentwire.Limits{}, &buf)
		if err == nil || !strings.Contains(err.Error(), "tar entry") {
			t.Errorf("upload of %q: %v, want a refusal naming the tar entry", name, err)
		}
	}
	// A FIFO met once the download has begun: the stream ends with the agent's reason.
	fifoDir := filepath.Join(a.rootfs, "data/withfifo")
	if err := os.MkdirAll(fifoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fifoDir, "a.txt"), bytes.Repeat([]byte("a"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "b.fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	err = a.client.CopyFrom(ctx, "/data/withfifo", out, false, agentwire.Limits{})
	if err == nil || !strings.Contains(err.Error(), "FIFO files are not copied") {
		t.Errorf("copy out of a tree with a FIFO: %v, want the agent's reason", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "withfifo")); err == nil {
		t.Error("a failed copy out left its directory behind")
	}

	// The upload call itself: bad limits in its query, another method.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(a.rootfs, "agent.sock"))
	}}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		method, query string
		status        int
		want          string
	}{
		{http.MethodPost, "dir=/data&max_bytes=lots", http.StatusBadRequest, `max_bytes=\"lots\" is not a number`},
		{http.MethodPost, "dir=data", http.StatusBadRequest, "must be absolute"},
		{http.MethodGet, "dir=/data", http.StatusMethodNotAllowed, ""},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, "http://agent"+agentwire.ProcUpload+"?"+tc.query, strings.NewReader(""))
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s upload?%s: %s %s, want %d and %q", tc.method, tc.query, res.Status, body, tc.status, tc.want)
		}
	}
	for _, p := range []string{"escape.txt", "data/escape.txt"} {
		if _, err := os.Stat(filepath.Join(rootfs, p)); err == nil {
			t.Errorf("%s was written", p)
		}
	}

	// mkdir, stat, remove.
	if err := a.client.Mkdir(ctx, "/data/a/b", 0o700, true); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Mkdir(ctx, "/data/a/b", 0, false); !errors.Is(err, fs.ErrExist) {
		t.Errorf("mkdir of an existing directory: %v, want fs.ErrExist", err)
	}
	fi, err := a.client.Stat(ctx, "/data/a/b")
	if err != nil || !fi.Mode.IsDir() || fi.Mode.Perm() != 0o700 {
		t.Errorf("stat: %+v, %v", fi, err)
	}
	if err := a.client.Remove(ctx, "/data/a", false); err == nil {
		t.Error("removing a non-empty directory without recursive succeeded")
	}
	if err := a.client.Remove(ctx, "/data/a", true); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Remove(ctx, "/data/a", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("remove a missing path: %v, want fs.ErrNotExist", err)
	}
}

// TestCopyLimits: a copy past its size or file limit fails in either direction with an error
// naming the limit, and a copy out of the guest leaves nothing of what it created.
func TestCopyLimits(t *testing.T) {
	a, ctx, src := treeAgent(t) // 4 files and links, 2 directories; 6+17+1 bytes of files

	tree := filepath.Join(src, "tree")
	err := a.client.CopyTo(ctx, tree, "/data", agentwire.Limits{MaxBytes: 10})
	if err == nil || !strings.Contains(err.Error(), "more than 10 bytes") || !strings.Contains(err.Error(), "--max-size") {
		t.Errorf("copy in past the size limit: %v", err)
	}
	if err := a.client.CopyTo(ctx, tree, "/data", agentwire.Limits{MaxBytes: 24, MaxFiles: 7}); err != nil {
		t.Fatalf("copy in at the limits: %v", err)
	}

	out := t.TempDir()
	for _, tc := range []struct {
		lim  agentwire.Limits
		want string
	}{
		{agentwire.Limits{MaxBytes: 23}, "more than 23 bytes of files"},
		{agentwire.Limits{MaxFiles: 6}, "more than 6 files"},
	} {
		err := a.client.CopyFrom(ctx, "/data/tree", out, false, tc.lim)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "out of the guest") {
			t.Errorf("copy out with %+v: %v, want an error containing %q", tc.lim, err, tc.want)
		}
		if _, err := os.Lstat(filepath.Join(out, "tree")); err == nil {
			t.Errorf("copy out with %+v left %s/tree behind", tc.lim, out)
		}
		err = a.client.CopyFrom(ctx, "/data/tree", filepath.Join(out, "renamed"), false, tc.lim)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("copy out to a new name with %+v: %v", tc.lim, err)
		}
		if ents, _ := os.ReadDir(out); len(ents) != 0 {
			t.Errorf("copy out with %+v left %d entries in %s", tc.lim, len(ents), out)
		}
	}
	if err := a.client.CopyFrom(ctx, "/data/tree", out, false, agentwire.Limits{MaxBytes: 24, MaxFiles: 7}); err != nil {
		t.Fatalf("copy out at the limits: %v", err)
	}
}
