package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
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

func TestCopyTreeInAndOut(t *testing.T) {
	rootfs := makeRootfs(t)
	a := startNSAgent(t, rootfs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := t.TempDir()
	makeTree(t, src)
	want := describe(t, filepath.Join(src, "tree"))

	// Into an existing directory: the tree keeps its name.
	if err := a.client.CopyTo(ctx, filepath.Join(src, "tree"), "/data"); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(rootfs, "data/tree")); got != want {
		t.Errorf("tree in the guest:\n%s\nwant:\n%s", got, want)
	}
	// To a new name.
	if err := a.client.CopyTo(ctx, filepath.Join(src, "tree"), "/data/renamed"); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(rootfs, "data/renamed")); got != want {
		t.Errorf("renamed tree in the guest:\n%s\nwant:\n%s", got, want)
	}
	stdout, _, _ := a.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", "cat /data/tree/link; /data/tree/sub/b.sh"}}, "")
	if stdout != "alpha\nb\n" {
		t.Errorf("reading the copied tree in the guest: %q", stdout)
	}

	// And out again, with owners.
	out := t.TempDir()
	if err := a.client.CopyFrom(ctx, "/data/tree", out, true); err != nil {
		t.Fatal(err)
	}
	if got := describe(t, filepath.Join(out, "tree")); got != want {
		t.Errorf("tree copied out:\n%s\nwant:\n%s", got, want)
	}
	// To a new local name, without owners: setuid is dropped.
	if err := a.client.CopyFrom(ctx, "/data/tree/sub/setuid", filepath.Join(out, "plain"), false); err != nil {
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

	err := a.client.CopyTo(ctx, src, "/missing/dir/f.txt")
	if err == nil || !strings.Contains(err.Error(), "/missing/dir does not exist in the guest") {
		t.Errorf("copy to a missing directory: %v", err)
	}
	err = a.client.CopyFrom(ctx, "/data/nothing", t.TempDir(), false)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("copy a missing guest file: %v, want fs.ErrNotExist", err)
	}
	err = a.client.CopyFrom(ctx, "/data", filepath.Join(t.TempDir(), "no/such/dir"), false)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("copy to a missing local directory: %v", err)
	}
	for _, p := range []string{"/data/../etc/passwd", "data/x", "/data/x/.."} {
		if _, err := a.client.Stat(ctx, p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("stat %q: %v, want an error naming the path", p, err)
		}
		if err := a.client.CopyTo(ctx, src, p); err == nil {
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
		_, err := a.client.Upload(ctx, "/data", &buf)
		if err == nil || !strings.Contains(err.Error(), "tar entry") {
			t.Errorf("upload of %q: %v, want a refusal naming the tar entry", name, err)
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
