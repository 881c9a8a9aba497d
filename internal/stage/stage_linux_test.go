package stage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testutil"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// extent is a run of data in a sparse test file.
type extent struct{ off, len int64 }

// writeSparse creates path with the given size, holding random data at exts and holes elsewhere.
func writeSparse(t testing.TB, path string, size int64, exts []extent) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(size), byte(len(exts))})
	for _, e := range exts {
		b := make([]byte, e.len)
		rng.Read(b)
		if _, err := f.WriteAt(b, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// allocated returns the bytes of storage a file occupies (st_blocks).
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func sameContent(t testing.TB, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, mib), make([]byte, mib)
	for off := int64(0); ; off += mib {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the MiB at %d", a, b, off)
		}
		if erra != nil || errb != nil {
			if !errors.Is(erra, io.ErrUnexpectedEOF) && !errors.Is(erra, io.EOF) || !errors.Is(errb, io.ErrUnexpectedEOF) && !errors.Is(errb, io.EOF) {
				t.Fatalf("read: %v, %v", erra, errb)
			}
			return
		}
	}
}

// noFile checks that path does not exist.
func noFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s was left behind (lstat: %v)", path, err)
	}
}

// shmDir returns a new directory under /dev/shm (a tmpfs, where smartvm's runtime directory
// lives by default), removed when the test ends, or "" and why there is none.
func shmDir(t testing.TB) (string, string) {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		return "", fmt.Sprintf("/dev/shm is not a tmpfs (statfs: %v)", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "stage-test-")
	if err != nil {
		return "", fmt.Sprintf("/dev/shm is not writable: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir, ""
}

var layouts = []struct {
	name string
	size int64
	exts []extent
	data int64 // bytes of data extents the copy must write
}{
	{"holes around data", 16 * mib, []extent{{0, 64 * kib}, {4 * mib, 128 * kib}, {9 * mib, 4 * kib}}, 196 * kib},
	{"data at the end", 8 * mib, []extent{{8*mib - 64*kib, 64 * kib}}, 64 * kib},
	{"unaligned size", 3*mib + 123, []extent{{mib, 4 * kib}, {3 * mib, 123}}, 4*kib + 123},
	{"all data", 3 * mib, []extent{{0, 3 * mib}}, 3 * mib},
	{"all hole", 32 * mib, nil, 0},
	{"empty", 0, nil, 0},
}

// TestCopySparse copies each layout with copy_file_range and with pread/pwrite, within a
// filesystem and across two, and checks content, size, holes and the bytes written.
func TestCopySparse(t *testing.T) {
	tmp := t.TempDir()
	dirs := map[string][2]string{"same fs": {tmp, tmp}}
	if shm, why := shmDir(t); shm != "" {
		dirs["tmpfs"] = [2]string{shm, shm}
		dirs["to tmpfs"] = [2]string{tmp, shm}
	} else {
		t.Logf("only the temp directory's filesystem: %s", why)
	}
	strategies := map[string]strategy{
		"copy_file_range": {noReflink: true},
		"pread/pwrite":    {noReflink: true, noRange: true},
	}
	for dname, d := range dirs {
		for sname, s := range strategies {
			for i, l := range layouts {
				t.Run(dname+"/"+sname+"/"+l.name, func(t *testing.T) {
					src := filepath.Join(d[0], "src-"+strings.ReplaceAll(dname+sname, "/", "")+string(rune('a'+i)))
					dst := filepath.Join(d[1], "dst-"+filepath.Base(src))
					writeSparse(t, src, l.size, l.exts)
					defer os.Remove(src)
					defer os.Remove(dst)
					res, err := copyFile(context.Background(), src, dst, s)
					if err != nil {
						t.Fatal(err)
					}
					if res != (Result{Method: MethodSparse, BytesWritten: l.data}) {
						t.Errorf("result %+v, want sparse with %d bytes written", res, l.data)
					}
					sameContent(t, src, dst)
					st, err := os.Stat(dst)
					if err != nil {
						t.Fatal(err)
					}
					if st.Size() != l.size || st.Mode().Perm() != 0o600 {
						t.Errorf("dst size %d mode %v, want %d and 0600", st.Size(), st.Mode().Perm(), l.size)
					}
					// Holes stay holes: the copy occupies no more than the source, and a
					// sparse source (the filesystem may not do holes) gives a sparse copy.
					if sa, da := allocated(t, src), allocated(t, dst); da > sa || (sa < l.size/2 && da >= l.size/2) {
						t.Errorf("dst occupies %d bytes, src %d, size %d: holes were filled", da, sa, l.size)
					}
				})
			}
		}
	}
}

// TestCopy runs the exported Copy, which picks its method, on this machine's temp directory.
func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeSparse(t, src, 64*mib, []extent{{mib, mib}, {63 * mib, 64 * kib}})
	res, err := Copy(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	switch res.Method {
	case MethodReflink:
		if res.BytesWritten != 0 {
			t.Errorf("reflink wrote %d bytes", res.BytesWritten)
		}
	case MethodSparse:
		if res.BytesWritten != mib+64*kib {
			t.Errorf("sparse copy wrote %d bytes, want %d", res.BytesWritten, mib+64*kib)
		}
	default:
		t.Errorf("method %q", res.Method)
	}
	sameContent(t, src, dst)
	t.Logf("%s: %+v", dir, res)
}

// cancelAfter is a context whose Err reports cancellation from its n-th call on.
type cancelAfter struct {
	context.Context
	n atomic.Int32
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestCopyErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeSparse(t, src, 8*mib, []extent{{0, 4 * kib}, {2 * mib, 4 * kib}, {6 * mib, 4 * kib}})
	dst := filepath.Join(dir, "dst")
	ctx := context.Background()

	t.Run("missing source", func(t *testing.T) {
		_, err := Copy(ctx, filepath.Join(dir, "nope"), dst)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err %v, want fs.ErrNotExist", err)
		}
		noFile(t, dst)
	})
	t.Run("source is a directory", func(t *testing.T) {
		_, err := Copy(ctx, dir, dst)
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err %v", err)
		}
		noFile(t, dst)
	})
	t.Run("destination exists", func(t *testing.T) {
		existing := filepath.Join(dir, "existing")
		if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Copy(ctx, src, existing)
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("err %v, want fs.ErrExist", err)
		}
		if b, err := os.ReadFile(existing); err != nil || string(b) != "keep me" {
			t.Errorf("existing file changed: %q, %v", b, err)
		}
	})
	t.Run("destination directory missing", func(t *testing.T) {
		_, err := Copy(ctx, src, filepath.Join(dir, "no", "dst"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("cancelled before", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := Copy(cctx, src, dst)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
		noFile(t, dst)
	})
	for name, s := range map[string]strategy{"copy_file_range": {}, "pread/pwrite": {noReflink: true, noRange: true}} {
		t.Run("cancelled between extents/"+name, func(t *testing.T) {
			cctx := &cancelAfter{Context: ctx}
			cctx.n.Store(3) // Copy's first check, then the first extent's two
			res, err := copyFile(cctx, src, dst, s)
			if res.Method == MethodReflink {
				t.Skip("the filesystem clones files: there are no extents to cancel between")
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err %v, want context.Canceled", err)
			}
			noFile(t, dst)
		})
	}
	t.Run("out of space", func(t *testing.T) {
		testutil.RequiresRoot(t)
		small := t.TempDir()
		if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=1m"); err != nil {
			t.Skipf("mount a 1 MiB tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(small, 0) })
		big := filepath.Join(dir, "big")
		writeSparse(t, big, 4*mib, []extent{{0, 2 * mib}})
		inner := filepath.Join(small, "src")
		writeSparse(t, inner, 768*kib, []extent{{0, 768 * kib}})
		for name, c := range map[string][2]string{"across filesystems": {big, filepath.Join(small, "dst1")}, "within one": {inner, filepath.Join(small, "dst2")}} {
			_, err := Copy(ctx, c[0], c[1])
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("%s: err %v, want ENOSPC", name, err)
			}
			noFile(t, c[1])
		}
	})
	if entries, _ := os.ReadDir(dir); len(entries) != 3 { // src, existing, big
		t.Errorf("left in %s: %v", dir, entries)
	}
}

// reflinkDir returns a directory on a filesystem that supports FICLONE: the test's temp
// directory when it does, else a small XFS or btrfs image loop-mounted for the test (as root,
// with mkfs.xfs or mkfs.btrfs installed). Otherwise it skips.
func reflinkDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if canReflink(t, dir) {
		return dir
	}
	if os.Geteuid() != 0 {
		t.Skipf("%s does not support reflinks, and mounting an XFS or btrfs image needs root", dir)
	}
	var reasons []string
	for _, fsType := range []string{"xfs", "btrfs"} {
		mkfs, err := exec.LookPath("mkfs." + fsType)
		if err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		img, mnt := filepath.Join(dir, fsType+".img"), filepath.Join(dir, fsType)
		if err := os.Mkdir(mnt, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 2<<30); err != nil { // sparse; XFS wants 300 MiB at least
			t.Fatal(err)
		}
		if out, err := exec.Command(mkfs, "-q", img).CombinedOutput(); err != nil {
			reasons = append(reasons, fmt.Sprintf("mkfs.%s: %v: %s", fsType, err, out))
			continue
		}
		if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
			reasons = append(reasons, fmt.Sprintf("mount %s image: %v: %s", fsType, err, out))
			continue
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
			}
		})
		if canReflink(t, mnt) {
			return mnt
		}
		reasons = append(reasons, fsType+" image does not clone")
	}
	t.Skipf("no filesystem with reflinks: %s", strings.Join(reasons, "; "))
	return ""
}

// canReflink reports whether FICLONE works in dir.
func canReflink(t testing.TB, dir string) bool {
	t.Helper()
	a, b := filepath.Join(dir, ".probe-a"), filepath.Join(dir, ".probe-b")
	defer os.Remove(a)
	defer os.Remove(b)
	if err := os.WriteFile(a, []byte("probe"), 0o600); err != nil {
		t.Fatal(err)
	}
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Create(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	return unix.IoctlFileClone(int(fb.Fd()), int(fa.Fd())) == nil
}

func TestCopyReflink(t *testing.T) {
	dir := reflinkDir(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeSparse(t, src, 16*mib, []extent{{0, mib}, {8 * mib, 64 * kib}})
	res, err := Copy(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Method: MethodReflink}) {
		t.Errorf("result %+v, want a reflink", res)
	}
	sameContent(t, src, dst)
	if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("dst: %v, %v", st, err)
	}
	// The clone is private: writing it leaves the source alone.
	before, _ := os.ReadFile(src)
	if err := os.WriteFile(dst, []byte("changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(src); !bytes.Equal(before, after) {
		t.Error("writing the clone changed the source")
	}

	// The sparse path works on the same filesystem too.
	dst2 := filepath.Join(dir, "dst2")
	res, err = copyFile(context.Background(), src, dst2, strategy{noReflink: true})
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Method: MethodSparse, BytesWritten: mib + 64*kib}) {
		t.Errorf("result %+v", res)
	}
	sameContent(t, src, dst2)
}
