package safedir_test

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testutil"
)

// A jail's tree holds files of the jail's uid: RemoveAllOwnedBy removes them, and still stops
// at any other owner and never follows a symlink.
func TestRemoveAllOwnedBy(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "f"), []byte("victim"), 0o600)
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	jail := filepath.Join(base, "j", "root")
	os.MkdirAll(filepath.Join(jail, "dev", "net"), 0o700)
	for _, p := range []string{jail, filepath.Join(jail, "dev"), filepath.Join(jail, "dev", "net")} {
		os.Chown(p, 4343, 4343)
	}
	syscall.Mknod(filepath.Join(jail, "dev", "net", "tun"), syscall.S_IFCHR|0o600, 10<<8|200)
	os.Chown(filepath.Join(jail, "dev", "net", "tun"), 4343, 4343)
	os.Symlink(victim, filepath.Join(jail, "escape"))
	os.Lchown(filepath.Join(jail, "escape"), 4343, 4343)
	os.WriteFile(filepath.Join(jail, "other"), nil, 0o600)
	os.Chown(filepath.Join(jail, "other"), 4444, 4444)

	if err := d.RemoveAll("j"); !errors.Is(err, safedir.ErrUntrusted) {
		t.Errorf("RemoveAll of a jail tree: %v, want ErrUntrusted", err)
	}
	if err := d.RemoveAllOwnedBy("j", 4343); !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "4444") {
		t.Errorf("a third owner: got %v", err)
	}
	os.Remove(filepath.Join(jail, "other"))
	if err := d.RemoveAllOwnedBy("j", 4343); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(base, "j")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail tree left: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "f")); err != nil || string(b) != "victim" {
		t.Errorf("the symlink's target was touched: %q, %v", b, err)
	}
}

func TestLinkAndChown(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	src := filepath.Join(base, "src")
	os.WriteFile(src, []byte("kernel"), 0o600)
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	os.Rename(src, filepath.Join(base, "moved")) // the link follows the open file, not the name
	if err := d.Link(f, "linked"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "linked")); string(b) != "kernel" {
		t.Errorf("linked = %q", b)
	}
	if err := d.Chown("linked", 4545, 4646); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(base, "linked"), &st)
	if st.Uid != 4545 || st.Gid != 4646 {
		t.Errorf("owner %d:%d", st.Uid, st.Gid)
	}
	// /dev/shm is tmpfs, another filesystem than the test's temp dir in most setups.
	shm, err := os.CreateTemp("/dev/shm", "safedir-link")
	if err != nil {
		t.Skip(err)
	}
	defer os.Remove(shm.Name())
	defer shm.Close()
	var a, b syscall.Stat_t
	syscall.Stat(base, &a)
	syscall.Fstat(int(shm.Fd()), &b)
	if a.Dev == b.Dev {
		t.Skip("/dev/shm is on the temp dir's filesystem")
	}
	if err := d.Link(shm, "cross"); !errors.Is(err, safedir.ErrCrossDevice) || !errors.Is(err, syscall.EXDEV) {
		t.Errorf("cross-filesystem link: %v, want ErrCrossDevice", err)
	}
}

// ListenUnix binds where d is, whatever is renamed on the way meanwhile, and follows no
// symbolic link; the socket stays once the listener closes.
func TestListenUnix(t *testing.T) {
	base := t.TempDir()
	d, err := safedir.OpenTrusted(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Mkdir("sub", 0o700); err != nil {
		t.Fatal(err)
	}
	// The directory moves after d was opened: the socket follows the directory, not its path.
	moved := base + ".moved"
	if err := os.Rename(base, moved); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(moved, base)
	ln, err := d.ListenUnix("sub/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(moved, "sub", "s.sock")
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial the socket at %s: %v", sock, err)
	}
	c.Close()
	ln.Close()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("the socket after Close: %v, %v; want it left for Remove", fi, err)
	}
	if err := d.Remove("sub/s.sock"); err != nil {
		t.Fatal(err)
	}
	// A symbolic link on the way is not followed.
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(moved, "link")); err != nil {
		t.Fatal(err)
	}
	if ln, err := d.ListenUnix("link/s.sock"); err == nil {
		ln.Close()
		t.Error("listened through a symbolic link")
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("a socket was made through the link: %v", ents)
	}
}
