package jailer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testutil"
)

func stat(t *testing.T, path string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func openFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestTree(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := t.Context()
	base := filepath.Join(t.TempDir(), "jailer")
	src := t.TempDir() // same filesystem as base
	cfg := Config{ID: "vm-1", ExecFile: "/opt/firecracker", UID: 4747, GID: 4748, ChrootBase: base}
	tr, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := Prepare(cfg); !errors.Is(err, ErrJailExists) {
		t.Errorf("second Prepare: %v, want ErrJailExists", err)
	}
	ch := tr.Chroot()
	if st := stat(t, ch.Root); st.Mode&0o777 != 0o700 || st.Uid != 0 {
		t.Errorf("chroot mode %o owner %d", st.Mode&0o777, st.Uid)
	}

	kernel := filepath.Join(src, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	secret := filepath.Join(src, "initrd")
	os.WriteFile(secret, []byte("initrd"), 0o600)
	disk := filepath.Join(src, "disk.img")
	os.WriteFile(disk, []byte("persistent"), 0o640)
	os.Chown(disk, 1234, 1235)
	eph := filepath.Join(src, "eph.img")
	os.WriteFile(eph, []byte("ephemeral"), 0o644)

	for _, p := range []struct {
		src, name string
		kind      Kind
	}{{kernel, "vmlinux", ReadOnly}, {secret, "initrd", ReadOnly}, {disk, "disk.img", Persistent}, {eph, "eph.img", Ephemeral}} {
		inside, err := tr.Place(ctx, openFile(t, p.src), p.src, p.name, p.kind)
		if err != nil || inside != "/"+p.name {
			t.Fatalf("Place %s = %q, %v", p.name, inside, err)
		}
	}
	ks, kj := stat(t, kernel), stat(t, ch.Host("/vmlinux"))
	if ks.Ino != kj.Ino || kj.Uid != 0 {
		t.Errorf("a world-readable kernel is linked and keeps its owner: ino %d/%d uid %d", ks.Ino, kj.Ino, kj.Uid)
	}
	if is, ij := stat(t, secret), stat(t, ch.Host("/initrd")); is.Ino == ij.Ino || ij.Uid != 4747 || is.Uid != 0 {
		t.Errorf("a private initrd is copied for the jail: same inode %v, copy uid %d, original uid %d", is.Ino == ij.Ino, ij.Uid, is.Uid)
	}
	if ds, dj := stat(t, disk), stat(t, ch.Host("/disk.img")); ds.Ino != dj.Ino || dj.Uid != 4747 || dj.Gid != 4748 {
		t.Errorf("a persistent drive is linked and the jail's: ino %d/%d owner %d:%d", ds.Ino, dj.Ino, dj.Uid, dj.Gid)
	}
	if es, ej := stat(t, eph), stat(t, ch.Host("/eph.img")); es.Ino == ej.Ino || ej.Uid != 4747 {
		t.Errorf("an ephemeral drive is a copy of the jail's")
	}
	if err := tr.CreateFile("firecracker.log"); err != nil {
		t.Fatal(err)
	}
	// What the jailer makes, as the jail's uid.
	os.MkdirAll(ch.Host("/dev/net"), 0o700)
	os.Chown(ch.Host("/dev"), 4747, 4748)
	os.Chown(ch.Host("/dev/net"), 4747, 4748)
	os.Chown(ch.Root, 4747, 4748)

	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if ds := stat(t, disk); ds.Uid != 1234 || ds.Gid != 1235 {
		t.Errorf("persistent drive not given back: %d:%d", ds.Uid, ds.Gid)
	}
	if b, _ := os.ReadFile(disk); string(b) != "persistent" {
		t.Errorf("persistent drive changed: %q", b)
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
	if err := tr.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestTreePersistentOtherFilesystem(t *testing.T) {
	testutil.RequiresRoot(t)
	base := filepath.Join(t.TempDir(), "jailer")
	shm, err := os.CreateTemp("/dev/shm", "jail-persistent")
	if err != nil {
		t.Skip(err)
	}
	defer os.Remove(shm.Name())
	defer shm.Close()
	tr, err := Prepare(Config{ID: "vm-2", ExecFile: "/opt/firecracker", UID: 4747, GID: 4747, ChrootBase: base})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Dev() == stat(t, shm.Name()).Dev {
		t.Skip("/dev/shm is on the temp dir's filesystem")
	}
	if _, err := tr.Place(t.Context(), shm, shm.Name(), "disk.img", Persistent); !errors.Is(err, ErrOtherFilesystem) {
		t.Errorf("Place = %v, want ErrOtherFilesystem", err)
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
}

func TestPrepareUntrustedBase(t *testing.T) {
	testutil.RequiresRoot(t)
	base := filepath.Join(t.TempDir(), "jailer")
	os.Mkdir(base, 0o777)
	os.Chmod(base, 0o777)
	if _, err := Prepare(Config{ID: "vm-3", ExecFile: "/opt/firecracker", UID: 4747, GID: 4747, ChrootBase: base}); err == nil {
		t.Error("a chroot base writable by everyone was accepted")
	}
}

// Rename moves a jail to a new ID without replacing one there, and Remove then removes it
// under its new name.
func TestTreeRename(t *testing.T) {
	testutil.RequiresRoot(t)
	base := filepath.Join(t.TempDir(), "jailer")
	warm := NewWarmID()
	if !IsWarmID(warm) || IsWarmID("vm-1") || IsWarmID(WarmIDPrefix+"0123456789ABCDEF") || IsWarmID(warm+"0") {
		t.Errorf("IsWarmID disagrees with NewWarmID (%s)", warm)
	}
	tr, err := Prepare(Config{ID: warm, ExecFile: "/opt/firecracker", UID: 4747, GID: 4747, ChrootBase: base})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Mkdir("run"); err != nil {
		t.Fatal(err)
	}
	taken, err := Prepare(Config{ID: "taken", ExecFile: "/opt/firecracker", UID: 4747, GID: 4747, ChrootBase: base})
	if err != nil {
		t.Fatal(err)
	}
	taken.Close()
	if err := tr.CheckFree("taken"); !errors.Is(err, ErrJailExists) {
		t.Errorf("CheckFree of another jail's ID: %v, want ErrJailExists", err)
	}
	if err := tr.CheckFree("vm-1"); err != nil {
		t.Errorf("CheckFree of a free ID: %v", err)
	}
	if err := tr.Rename("taken"); !errors.Is(err, ErrJailExists) {
		t.Errorf("Rename onto another jail: %v, want ErrJailExists", err)
	}
	if err := tr.Rename("vm-1"); err != nil {
		t.Fatal(err)
	}
	if got := tr.Chroot().Root; got != filepath.Join(base, "firecracker", "vm-1", "root") {
		t.Errorf("chroot after Rename: %s", got)
	}
	if _, err := os.Stat(filepath.Join(tr.Chroot().Root, "run")); err != nil {
		t.Errorf("the jail's contents did not move: %v", err)
	}
	src := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(src, []byte("kernel"), 0o600) // not world-readable: copied, not linked
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.Place(t.Context(), f, src, "vmlinux", ReadOnly)
	f.Close()
	if err != nil {
		t.Errorf("Place after Rename: %v", err)
	} else if b, _ := os.ReadFile(filepath.Join(tr.Chroot().Root, "vmlinux")); string(b) != "kernel" {
		t.Errorf("the copy in the renamed jail holds %q", b)
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", "vm-1")); !os.IsNotExist(err) {
		t.Errorf("renamed jail left after Remove: %v", err)
	}
}

// A Shared file is linked into each jail with an ACL entry for that jail's uid: it stays its
// owner's with its mode, each jail's uid reads it, nobody else gains anything, an entry that
// was there before stays, and once the jails are removed the file is as it was.
func TestTreeShared(t *testing.T) {
	ctx := t.Context()
	base, src := sharedSource(t)
	d, err := safedir.OpenTrusted(base, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := grantRead(d, openFile(t, src), 4700); err != nil { // the owner's own entry, from before
		t.Fatal(err)
	}
	var trees []*Tree
	for i, uid := range []uint32{4751, 4752} {
		tr, err := Prepare(Config{ID: "shared-" + strconv.Itoa(i), ExecFile: "/opt/firecracker", UID: uid, GID: uid, ChrootBase: base})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		if inside, err := tr.Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared); err != nil || inside != "/snapshot-vm.mem" {
			t.Fatalf("Place = %q, %v", inside, err)
		}
		trees = append(trees, tr)
	}
	st := stat(t, src)
	if st.Uid != 0 || st.Nlink != 3 || st.Mode&0o027 != 0 {
		t.Errorf("shared file: uid %d, mode %o, %d links; want root's, 0640 at most, in both jails", st.Uid, st.Mode&0o777, st.Nlink)
	}
	for _, tr := range trees {
		if err := readAs(tr.cfg.UID, tr.Chroot().Host("/snapshot-vm.mem")); err != nil {
			t.Errorf("uid %d cannot read its link: %v", tr.cfg.UID, err)
		}
	}
	if err := readAs(4753, src); err == nil {
		t.Error("a uid with no entry reads the file")
	}
	// The first jail is reaped after a crash (GiveBack from its record), the second removed.
	if err := GiveBack(trees[0].base, trees[0].cfg, trees[0].Owners()); err != nil {
		t.Fatal(err)
	}
	if err := readAs(4751, src); err == nil {
		t.Error("uid 4751 still reads the file once its jail gave it back")
	}
	if err := trees[1].Remove(); err != nil {
		t.Fatal(err)
	}
	es, err := readACL(openFile(t, src))
	if err != nil || len(es) != 5 || es[1] != (aclEnt{aclUser, aclRead, 4700}) {
		t.Errorf("ACL after the jails: %v, %v; want the owner's entry for 4700 kept", es, err)
	}
	if err := revokeRead(d, openFile(t, src), 4700); err != nil {
		t.Fatal(err)
	}
	if st := stat(t, src); st.Nlink != 1 || st.Mode&0o777 != 0o600 {
		t.Errorf("after the last entry: mode %o, %d links; want 0600 and one", st.Mode&0o777, st.Nlink)
	}
	if _, err := syscall.Getxattr(src, aclXattr, make([]byte, 64)); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("an ACL is left: %v", err)
	}
}

// readAs reads the file at path as uid, in a child process (dd), and returns why it could
// not. The child opens it again through a descriptor of it (/proc/self/fd), so only the file's
// own permissions count, not the directories on the way, as in a jail, where firecracker's
// chroot is the file's directory.
func readAs(uid uint32, path string) error { return readAsIDs(uid, uid, path) }

// readAsIDs is readAs as uid with group gid.
func readAsIDs(uid, gid uint32, path string) error {
	fd, err := syscall.Open(path, unix.O_PATH|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	cmd := exec.Command("dd", "if=/proc/self/fd/3", "of=/dev/null", "status=none")
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// A template's clones may be many (up to smartvm.MaxClones): each jail of one shares the
// template's memory, and the file's ACL grows an entry per jail. Past what the filesystem
// stores in one ACL, a jail gets a copy instead; every jail placed reads its file, and once
// they are removed the file is as it was.
func TestTreeSharedMany(t *testing.T) {
	ctx := t.Context()
	base, src := sharedSource(t)
	const n = 600 // more than ext4 holds in one ACL (a block's worth)
	shared := 0
	for i := range n {
		uid := uint32(5000 + i)
		tr, err := Prepare(Config{ID: "many-" + strconv.Itoa(i), ExecFile: "/opt/firecracker", UID: uid, GID: uid, ChrootBase: base})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		defer tr.Remove()
		if _, err := tr.Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared); err != nil {
			t.Fatalf("jail %d: Place: %v", i, err)
		}
		if len(tr.Owners()) == 1 {
			shared++
		}
		if i%97 == 0 || i == n-1 {
			if err := readAs(uid, tr.Chroot().Host("/snapshot-vm.mem")); err != nil {
				t.Errorf("jail %d (uid %d) cannot read its file: %v", i, uid, err)
			}
		}
	}
	t.Logf("%d of %d jails share the file", shared, n)
	if shared < 100 {
		t.Errorf("only %d jails share the file; want at least 100", shared)
	}
}

// sharedSource returns a chroot base to be made and a file of root's (mode 0600) on its
// filesystem for jails to share; it skips the test where the filesystem has no ACLs.
func sharedSource(t *testing.T) (base, src string) {
	testutil.RequiresRoot(t)
	base = filepath.Join(t.TempDir(), "jailer")
	src = filepath.Join(t.TempDir(), "vm.mem") // same filesystem as base
	os.WriteFile(src, []byte("guest memory"), 0o600)
	if _, err := unix.Fgetxattr(int(openFile(t, src).Fd()), aclXattr, nil); errors.Is(err, unix.EOPNOTSUPP) {
		t.Skip("the temp dir's filesystem has no ACLs")
	}
	return base, src
}

// A jail's uid reads the file it shares and so can take a lock on it: that must not stop
// root from sharing it with other jails or taking it back from them.
func TestTreeSharedLockedByJail(t *testing.T) {
	ctx := t.Context()
	base, src := sharedSource(t)
	var trees []*Tree
	for i, uid := range []uint32{4771, 4772, 4773} {
		tr, err := Prepare(Config{ID: "locked-" + strconv.Itoa(i), ExecFile: "/opt/firecracker", UID: uid, GID: uid, ChrootBase: base})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		defer tr.Remove()
		trees = append(trees, tr)
	}
	for _, tr := range trees[:2] {
		if _, err := tr.Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared); err != nil {
			t.Fatal(err)
		}
	}
	// The first jail's uid locks its link, and keeps the lock.
	link, err := os.OpenFile(trees[0].Chroot().Host("/snapshot-vm.mem"), unix.O_PATH, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	cmd := exec.Command("sh", "-c", "exec 4</proc/self/fd/3 3<&- && flock -x 4 && echo locked && exec sleep 60")
	cmd.ExtraFiles = []*os.File{link}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4771, Gid: 4771}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if b := make([]byte, 7); func() bool { n, _ := out.Read(b); return string(b[:n]) != "locked\n" }() {
		t.Fatal("the jail's uid could not lock its link")
	}
	done := make(chan error, 1)
	go func() {
		_, err := trees[2].Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared)
		done <- errors.Join(err, trees[1].Remove())
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Place and Remove of other jails still wait for the lock the first jail's uid holds")
	}
	if err := readAs(4773, trees[2].Chroot().Host("/snapshot-vm.mem")); err != nil {
		t.Errorf("the third jail cannot read its file: %v", err)
	}
	if err := readAs(4772, src); err == nil {
		t.Error("the second jail's uid still reads the file once removed")
	}
}

// A jail's uid owns its chroot's root and can move or unlink its link to a shared file:
// the jail's removal, and reaping from its record, still take its uid's ACL entry away.
func TestTreeSharedMovedLink(t *testing.T) {
	ctx := t.Context()
	base, src := sharedSource(t)
	for i, move := range []string{"moved", ""} {
		uid := uint32(4781 + i)
		tr, err := Prepare(Config{ID: "moved-" + strconv.Itoa(i), ExecFile: "/opt/firecracker", UID: uid, GID: uid, ChrootBase: base})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		if _, err := tr.Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared); err != nil {
			t.Fatal(err)
		}
		link := tr.Chroot().Host("/snapshot-vm.mem")
		if move != "" {
			err = os.Rename(link, tr.Chroot().Host("/"+move))
		} else {
			err = os.Remove(link)
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			err = tr.Remove()
		} else {
			err = errors.Join(GiveBack(tr.base, tr.cfg, tr.Owners()), RemoveJail(tr.base, tr.cfg))
		}
		if err != nil {
			t.Fatal(err)
		}
		es, err := readACL(openFile(t, src))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.tag == aclUser && e.id == uid {
				t.Errorf("jail %d (link %q): uid %d's entry is left on the shared file: %v", i, move, uid, es)
			}
		}
	}
}

// A file may come with an ACL whose mask withholds what its entries grant (one inherited from
// a directory's default ACL has the mask of the mode it was made with): sharing it must not
// lift that mask for anyone but the jail's uid, nor leave it lifted once the jail is gone.
func TestTreeSharedMaskedACL(t *testing.T) {
	ctx := t.Context()
	base, src := sharedSource(t)
	buf := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range []aclEnt{{aclUserObj, 6, aclNoID}, {aclUser, 6, 4790}, {aclGroupObj, 4, aclNoID}, {aclMask, 0, aclNoID}, {aclOther, 0, aclNoID}} {
		buf = binary.LittleEndian.AppendUint16(buf, e.tag)
		buf = binary.LittleEndian.AppendUint16(buf, e.perm)
		buf = binary.LittleEndian.AppendUint32(buf, e.id)
	}
	if err := unix.Setxattr(src, aclXattr, buf, 0); err != nil {
		t.Fatal(err)
	}
	os.Chown(src, 0, 4791)
	if readAs(4790, src) == nil {
		t.Fatal("the masked entry reads the file before it is shared")
	}
	tr, err := Prepare(Config{ID: "masked", ExecFile: "/opt/firecracker", UID: 4792, GID: 4792, ChrootBase: base})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.Place(ctx, openFile(t, src), src, "snapshot-vm.mem", Shared); err != nil {
		t.Fatal(err)
	}
	if err := readAs(4792, tr.Chroot().Host("/snapshot-vm.mem")); err != nil {
		t.Errorf("the jail's uid cannot read its file: %v", err)
	}
	if readAs(4790, src) == nil {
		t.Error("uid 4790, which the file's mask kept out, reads it while it is shared")
	}
	if readGroupAs(4791, src) == nil {
		t.Error("the file's group, which its mask kept out, reads it while it is shared")
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if readAs(4790, src) == nil {
		t.Error("uid 4790, which the file's mask kept out, reads it once the jail is gone")
	}
	if readGroupAs(4791, src) == nil {
		t.Error("the file's group, which its mask kept out, reads it once the jail is gone")
	}
}

// readGroupAs is readAs for a user of no entry in group gid.
func readGroupAs(gid uint32, path string) error { return readAsIDs(4799, gid, path) }

// A jail's uid owns its chroot's root: while root gives a socket or a new file there to it,
// the jail may put a link to another file (a shared template, a kernel) at that name. Root
// must give away only what it made and checked, never what the name leads to by then.
func TestTreeOwnRace(t *testing.T) {
	testutil.RequiresRoot(t)
	base := filepath.Join(t.TempDir(), "jailer")
	victim := filepath.Join(t.TempDir(), "template.mem") // same filesystem as base
	os.WriteFile(victim, []byte("guest memory"), 0o600)
	tr, err := Prepare(Config{ID: "race", ExecFile: "/opt/firecracker", UID: 4795, GID: 4795, ChrootBase: base})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	defer tr.Remove()
	target, tmp := tr.Chroot().Host("/target"), tr.Chroot().Host("/tmp-link")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the jail: a link to the victim, moved onto the name again and again
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.Link(victim, tmp)
			os.Rename(tmp, target)
		}
	}()
	for i := 0; i < 5000 && stat(t, victim).Uid == 0; i++ {
		os.Remove(target)
		if i%2 == 0 {
			if ln, _, err := tr.ListenUnix("target"); err == nil {
				ln.Close()
			}
		} else {
			tr.CreateFile("target")
		}
	}
	close(stop)
	<-done
	if st := stat(t, victim); st.Uid != 0 {
		t.Errorf("the file linked in by the jail was given to its uid %d", st.Uid)
	}
}
