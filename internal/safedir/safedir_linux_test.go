package safedir_test

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m, nil) }

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// Directories smartvm creates are 0700 whatever the umask, and a second open finds them.
func TestOpenTrustedCreatesPrivateDirs(t *testing.T) {
	for _, mask := range []int{0, 0o022, 0o077, 0o777} {
		base := t.TempDir()
		old := unix.Umask(mask)
		d, err := safedir.OpenTrusted(filepath.Join(base, "a", "b", "c"), true)
		unix.Umask(old)
		if err != nil {
			t.Fatalf("umask %04o: %v", mask, err)
		}
		d.Close()
		for _, p := range []string{"a", "a/b", "a/b/c"} {
			if got := mode(t, filepath.Join(base, p)); got != fs.ModeDir|0o700 {
				t.Errorf("umask %04o: %s has mode %v, want drwx------", mask, p, got)
			}
		}
		if _, err := safedir.OpenTrusted(filepath.Join(base, "a", "b", "c"), false); err != nil {
			t.Errorf("reopen: %v", err)
		}
	}
}

func TestOpenTrustedMissing(t *testing.T) {
	_, err := safedir.OpenTrusted(filepath.Join(t.TempDir(), "nope"), false)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want fs.ErrNotExist", err)
	}
}

func TestOpenTrustedRefuses(t *testing.T) {
	base := t.TempDir()
	victim := filepath.Join(base, "victim")
	os.Mkdir(victim, 0o700)
	os.Symlink(victim, filepath.Join(base, "link"))
	os.Mkdir(filepath.Join(base, "open"), 0o777)
	os.Chmod(filepath.Join(base, "open"), 0o777)
	os.Mkdir(filepath.Join(base, "sticky-mine"), 0o700)
	os.Chmod(filepath.Join(base, "sticky-mine"), 0o777|os.ModeSticky)
	os.WriteFile(filepath.Join(base, "file"), nil, 0o600)
	for _, tc := range []struct {
		path, want string
	}{
		{"link/cache", "is a symbolic link"},
		{"link", "is a symbolic link"},
		{"open/cache", "can be written by other users"},
		{"sticky-mine", "can be written by other users"},
		{"file/cache", "is not a directory"},
	} {
		_, err := safedir.OpenTrusted(filepath.Join(base, tc.path), true)
		if !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an untrusted-path error saying %q", tc.path, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Errorf("something was created through the link: %v", ents)
	}
	// A sticky, world-writable directory owned by root (as /tmp) is fine on the way, when
	// the test runs as root.
	if os.Geteuid() == 0 {
		d, err := safedir.OpenTrusted(filepath.Join(base, "sticky-mine", "x"), true)
		if err != nil {
			t.Errorf("under a sticky root-owned dir: %v", err)
		}
		d.Close()
	}
}

// A directory on the way that another user owns is refused, and the error names the owner.
func TestOpenTrustedForeignOwner(t *testing.T) {
	u := testutil.OtherUser(t)
	shared := testutil.SharedDir(t)
	u.Sh(t, "mkdir -m 0755 "+shared+"/.smartvm")
	_, err := safedir.OpenTrusted(filepath.Join(shared, ".smartvm", "runtime"), true)
	if !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), u.Name) {
		t.Fatalf("got %v, want an untrusted-path error naming %s", err, u.Name)
	}
	if _, err := os.Stat(filepath.Join(shared, ".smartvm", "runtime")); err == nil {
		t.Error("the runtime directory was created inside the other user's directory")
	}
}

// The other user swaps a directory it owns between a real directory and a symlink to a victim
// directory while smartvm opens a path through it. smartvm must refuse every time and never
// create anything in the victim.
func TestOpenTrustedRenameRace(t *testing.T) {
	u := testutil.OtherUser(t)
	shared := testutil.SharedDir(t)
	victim := t.TempDir()
	os.Chmod(victim, 0o755)
	os.Chmod(filepath.Dir(victim), 0o755)
	t.Cleanup(func() { os.Chmod(filepath.Dir(victim), 0o700) })
	script := "cd " + shared + " && while :; do mkdir x 2>/dev/null; rmdir x 2>/dev/null; ln -s " + victim + " x 2>/dev/null; rm -f x; done"
	cmd := u.Command("/bin/sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	refused := 0
	for i := range 2000 {
		d, err := safedir.OpenTrusted(filepath.Join(shared, "x", "cache"), true)
		if err != nil {
			if errors.Is(err, safedir.ErrUntrusted) {
				refused++
			}
			continue
		}
		d.Close()
		// Opening may succeed only where smartvm made x itself, in a moment x was missing.
		fi, err := os.Lstat(filepath.Join(shared, "x"))
		if err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Fatalf("try %d: opened a path through a directory smartvm did not make: %v %v", i, fi, err)
		}
		os.RemoveAll(filepath.Join(shared, "x"))
	}
	if refused == 0 {
		t.Error("the race was never seen: no open was refused")
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Fatalf("the victim directory was written: %v", ents)
	}
}

// RemoveAll removes links, not what they point to, and keeps what another user owns.
func TestRemoveAllNoFollow(t *testing.T) {
	base := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o600)
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	os.MkdirAll(filepath.Join(base, "tree", "sub"), 0o700)
	os.Symlink(outside, filepath.Join(base, "tree", "sub", "link"))
	os.Symlink(filepath.Join(outside, "keep"), filepath.Join(base, "tree", "filelink"))
	if err := d.CheckTree("tree"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("CheckTree: got %v, want a symbolic link", err)
	}
	if err := d.RemoveAll("tree"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "tree")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("tree left: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "x" {
		t.Errorf("the link's target was touched: %q %v", b, err)
	}
	if err := d.RemoveAll("tree"); err != nil {
		t.Errorf("second RemoveAll: %v", err)
	}
	for _, bad := range []string{"../x", "/etc", "a/../../b", ""} {
		if err := d.RemoveAll(bad); err == nil {
			t.Errorf("RemoveAll(%q) succeeded", bad)
		}
	}
}

func TestRemoveAllForeignOwnerAndMount(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	os.MkdirAll(filepath.Join(base, "a"), 0o700)
	os.WriteFile(filepath.Join(base, "a", "theirs"), nil, 0o600)
	os.Chown(filepath.Join(base, "a", "theirs"), 4242, 4242)
	if err := d.RemoveAll("a"); !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "4242") {
		t.Errorf("foreign file: got %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "a", "theirs")); err != nil {
		t.Errorf("foreign file removed: %v", err)
	}
	os.Remove(filepath.Join(base, "a", "theirs"))

	mnt := filepath.Join(base, "m", "mnt")
	os.MkdirAll(mnt, 0o700)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	os.WriteFile(filepath.Join(mnt, "data"), []byte("x"), 0o600)
	if err := d.RemoveAll("m"); !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "another filesystem") {
		t.Errorf("mount: got %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "data")); err != nil {
		t.Errorf("file on the mount removed: %v", err)
	}
}

// While something swaps a subdirectory for a symlink to a victim in a loop, writes, reads and
// removals through the Dir never reach the victim.
func TestSwapRace(t *testing.T) {
	base := t.TempDir()
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "f"), []byte("victim"), 0o600)
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			os.Mkdir(filepath.Join(base, "sub"), 0o700)
			os.Rename(filepath.Join(base, "sub"), filepath.Join(base, "old"))
			os.Symlink(victim, filepath.Join(base, "sub"))
			os.Remove(filepath.Join(base, "sub"))
			os.RemoveAll(filepath.Join(base, "old"))
		}
	})
	for range 3000 {
		d.WriteFileAtomic("sub/f", []byte("mine"), 0o600)
		d.ReadFile("sub/f", 10)
		d.Remove("sub/f")
		d.RemoveAll("sub")
	}
	stop.Store(true)
	wg.Wait()
	if b, err := os.ReadFile(filepath.Join(victim, "f")); err != nil || string(b) != "victim" {
		t.Fatalf("victim file changed or removed: %q %v", b, err)
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 1 {
		t.Fatalf("victim directory changed: %v", ents)
	}
}

// A FIFO or socket where a file belongs is refused at once, without blocking.
func TestOpenRegularRefusesFIFO(t *testing.T) {
	base := t.TempDir()
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.Mkfifo(filepath.Join(base, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadFile("fifo", 100); !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "FIFO") {
		t.Errorf("got %v", err)
	}
	os.WriteFile(filepath.Join(base, "big"), make([]byte, 200), 0o600)
	if _, err := d.ReadFile("big", 100); err == nil {
		t.Error("a file over the limit was read")
	}
}

func TestWriteFileAtomicMode(t *testing.T) {
	base := t.TempDir()
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	old := unix.Umask(0)
	err = d.WriteFileAtomic("state.json", []byte("{}"), 0o600)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if got := mode(t, filepath.Join(base, "state.json")); got != 0o600 {
		t.Errorf("mode %v", got)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 1 {
		t.Errorf("temporary file left: %v", ents)
	}
}

func TestLockHolder(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("flock", p, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("flock(1): %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for range 500 {
		if pid := safedir.LockHolder(f); pid != 0 {
			// flock(1) forks sleep with the lock inherited, or execs it: either way the
			// holder is flock's pid or its child's.
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 2e6}, nil)
	}
	t.Fatal("LockHolder never saw the lock")
}

// ReadInput reads a regular file up to one byte past its limit (the caller reports a larger
// file), and refuses a FIFO at once instead of waiting for a writer.
func TestReadInput(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := safedir.ReadInput(file, 10); err != nil || string(b) != "0123456789" {
		t.Errorf("ReadInput at its limit: %q %v", b, err)
	}
	if b, err := safedir.ReadInput(file, 4); err != nil || string(b) != "01234" {
		t.Errorf("ReadInput past its limit: %q %v, want the limit and one byte more", b, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := safedir.ReadInput(fifo, 10); !errors.Is(err, safedir.ErrUntrusted) {
		t.Errorf("ReadInput of a FIFO: %v, want ErrUntrusted", err)
	}
	if _, err := safedir.ReadInput(filepath.Join(dir, "missing"), 10); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadInput of a missing file: %v, want ErrNotExist", err)
	}
}
