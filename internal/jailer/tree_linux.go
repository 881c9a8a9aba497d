package jailer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/stage"
)

// ErrJailExists reports a jail directory that is already there: a live jail of that ID, or
// one a crash left behind for reaping.
var ErrJailExists = errors.New("jail directory exists")

// ErrOtherFilesystem reports a persistent drive that is not on the chroot's filesystem, where
// it cannot be hard-linked into the jail (and is never copied).
var ErrOtherFilesystem = errors.New("not on the chroot's filesystem")

// Kind says how a file gets into the jail.
type Kind int

const (
	// ReadOnly files (kernel, initrd, read-only drives) are hard-linked when on the chroot's
	// filesystem and readable by everyone, else copied (reflink where possible) and given to
	// the jail's uid. A link is never chowned: the original keeps its owner.
	ReadOnly Kind = iota
	// Ephemeral writable drives are staged (reflink or sparse copy) into the jail and given
	// to the jail's uid.
	Ephemeral
	// Persistent writable drives are hard-linked, never copied, and given to the jail's uid
	// while the jail lives (Owner records what Remove gives back). One on another filesystem
	// is refused with ErrOtherFilesystem.
	Persistent
	// Shared files are read by several jails at once and must be neither theirs nor others'
	// to read (a template snapshot's memory, which its clones map): hard-linked, with an ACL
	// entry that lets the jail's uid read them while the jail lives (Owner.Read), where the
	// chroot's filesystem is theirs and has ACLs; else copied as Ephemeral files are.
	Shared
)

// Owner is a file's owner before the jail took it over: Remove gives it back.
type Owner struct {
	Name string `json:"name"` // in the chroot's root
	Ino  uint64 `json:"ino"`  // the file's inode, checked before it is given back
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	// Read: the file kept its owner, and UID, the jail's, was let read it by an ACL entry
	// (Shared), which giving it back removes.
	Read bool `json:"read,omitempty"`
	// Handle and HandleType name a Read file to the kernel (name_to_handle_at), so that its
	// entry is removed wherever the jail's uid moved its link, or if it removed it.
	Handle     []byte `json:"handle,omitempty"`
	HandleType int32  `json:"handle_type,omitempty"`
}

// Tree is a jail's directory, prepared before the jailer runs: the chroot base (trusted like
// the runtime root) and the chroot <base>/<exec name>/<id>/root in it.
type Tree struct {
	cfg  Config
	base *safedir.Dir
	// root is the chroot (prefix ""), or, for a jail in use, whose root the jailer gave to
	// the jail's uid, the jail's directory above it (prefix "root/").
	root   *safedir.Dir
	prefix string
	owners []Owner
}

// Prepare opens (creating) the chroot base, which must be trustworthy (safedir.OpenTrusted),
// and creates the jail's directories (mode 0700). A jail directory already there is refused
// with ErrJailExists: the jailer expects a fresh ID, and a leftover is reaping's to remove.
func Prepare(cfg Config) (*Tree, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base, err := safedir.OpenTrusted(cfg.Base(), true)
	if err != nil {
		return nil, fmt.Errorf("chroot base: %w", err)
	}
	rel := filepath.Join(cfg.ExecName(), cfg.ID)
	if _, err := base.Lstat(rel); err == nil {
		base.Close()
		return nil, jailExists(base, rel)
	}
	root, err := base.MkdirAll(filepath.Join(rel, "root"), 0o700)
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("create jail: %w", err)
	}
	return &Tree{cfg: cfg, base: base, root: root}, nil
}

// OpenJail opens the tree of cfg's jail as it is while the jail runs, to put more files into
// it (a snapshot's). Its Remove removes the whole jail.
func OpenJail(cfg Config) (*Tree, error) {
	base, err := safedir.OpenTrusted(cfg.Base(), false)
	if err != nil {
		return nil, fmt.Errorf("chroot base: %w", err)
	}
	dir, err := base.OpenDir(filepath.Join(cfg.ExecName(), cfg.ID))
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("open jail: %w", err)
	}
	return &Tree{cfg: cfg, base: base, root: dir, prefix: "root/"}, nil
}

// Retrieve moves name (a file in the chroot's root that firecracker wrote) to dst, a path
// outside the jail, as this process's: copied (a reflink where the filesystem can, else
// sparse), then removed from the jail. dst must not exist.
func (t *Tree) Retrieve(ctx context.Context, name, dst string) error {
	// The chroot is the jail uid's: open the file through the tree (no link followed, no
	// FIFO waited on), check it is a regular file of the jail's, and copy what was opened.
	f, err := t.root.OpenFile(t.prefix+name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("take %s out of the jail: %w", name, err)
	}
	defer f.Close()
	info, err := safedir.Stat(f)
	if err != nil {
		return err
	}
	if !info.Mode.IsRegular() || info.UID != t.cfg.UID {
		return fmt.Errorf("take %s out of the jail: %w: not a regular file of the jail's uid (%v, uid %d)", name, safedir.ErrUntrusted, info.Mode, info.UID)
	}
	if _, err := stage.Copy(ctx, fdPath(f), dst); err != nil {
		return fmt.Errorf("take %s out of the jail: %w", name, err)
	}
	return t.root.Remove(t.prefix + name)
}

// Rename moves the jail to id: its directory <base>/<exec name>/<old id> becomes
// <base>/<exec name>/<id>, which must not exist (ErrJailExists). A firecracker running in it
// keeps its root; the host paths of its files change. A warm jail takes its VM's name so.
func (t *Tree) Rename(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	exec := t.cfg.ExecName()
	err := t.base.RenameNoReplace(filepath.Join(exec, t.cfg.ID), t.base, filepath.Join(exec, id))
	if errors.Is(err, fs.ErrExist) {
		return jailExists(t.base, filepath.Join(exec, id))
	}
	if err != nil {
		return fmt.Errorf("rename jail: %w", err)
	}
	t.cfg.ID = id
	return nil
}

// CheckFree returns an error wrapping ErrJailExists when a jail's directory for id is there
// (Rename would refuse to move onto it): one of another runtime directory, or a leftover.
func (t *Tree) CheckFree(id string) error {
	rel := filepath.Join(t.cfg.ExecName(), id)
	if _, err := t.base.Lstat(rel); !errors.Is(err, fs.ErrNotExist) {
		return jailExists(t.base, rel)
	}
	return nil
}

// jailExists is the ErrJailExists of the jail directory rel under base, with what to do.
func jailExists(base *safedir.Dir, rel string) error {
	return fmt.Errorf("%w: %s: a vm of that name runs under this chroot base (from another runtime directory?), or a crash left it: remove it by hand once no firecracker runs in it, or choose another name", ErrJailExists, base.Join(rel))
}

// OwnSocket gives the socket name in the chroot's root to the jail's uid, refusing anything
// but a socket (a link put there is never followed). The socket checked is the file changed:
// the jail's uid may put another file at name meanwhile.
func (t *Tree) OwnSocket(name string) error {
	return t.root.ChownIf(t.prefix+name, t.cfg.UID, t.cfg.GID, func(info safedir.Info) error {
		if info.Mode.Type() != fs.ModeSocket {
			return fmt.Errorf("%s in the jail: %w: not a socket (%v)", name, safedir.ErrUntrusted, info.Mode)
		}
		return nil
	})
}

// GiveBackOwners gives back the files Place lent to the jail since t was opened (GiveBack),
// unlinking them from the jail.
func (t *Tree) GiveBackOwners() error {
	err := GiveBack(t.base, t.cfg, t.owners)
	t.owners = nil
	return err
}

// Chroot is the jail's layout.
func (t *Tree) Chroot() Chroot { return t.cfg.Chroot() }

// Dev is the device of the chroot's filesystem.
func (t *Tree) Dev() uint64 { return t.root.Dev() }

// Owners are the owners Place took files from (persistent drives).
func (t *Tree) Owners() []Owner { return t.owners }

// Place puts the file f has open (src is its path, for copying) into the jail as name (a
// single file name in the chroot's root), as kind says, and returns its path as firecracker
// sees it.
func (t *Tree) Place(ctx context.Context, f *os.File, src, name string, kind Kind) (string, error) {
	info, err := safedir.Stat(f)
	if err != nil {
		return "", fmt.Errorf("place %s in the jail: %w", src, err)
	}
	same := info.Dev == t.root.Dev()
	inside := "/" + name
	chown := func() error { return t.Own(name) }
	switch {
	case kind == Persistent:
		if !same {
			return "", fmt.Errorf("%w: persistent drive %s cannot be hard-linked into the jail under %s, and is never copied: keep it on the chroot's filesystem (or move the chroot base there)", ErrOtherFilesystem, src, t.cfg.Base())
		}
		if err := t.root.Link(f, t.prefix+name); err != nil {
			return "", fmt.Errorf("link %s into the jail: %w", src, err)
		}
		t.owners = append(t.owners, Owner{Name: name, Ino: info.Ino, UID: info.UID, GID: info.GID})
		return inside, chown()
	case kind == ReadOnly && same && info.Mode.Perm()&0o004 != 0 && info.Mode.IsRegular():
		if err := t.root.Link(f, t.prefix+name); err == nil {
			return inside, nil
		}
		// A filesystem without hard links (or a protected one): copy instead.
	case kind == Shared && same && info.Mode.IsRegular():
		err := grantRead(t.base, f, t.cfg.UID)
		if err == nil {
			if err = t.root.Link(f, t.prefix+name); err == nil {
				o := Owner{Name: name, Ino: info.Ino, UID: t.cfg.UID, GID: t.cfg.GID, Read: true}
				// Without handles (a filesystem that has none), the name is all there is.
				if h, _, err := unix.NameToHandleAt(int(f.Fd()), "", unix.AT_EMPTY_PATH); err == nil {
					o.Handle, o.HandleType = h.Bytes(), h.Type()
				}
				t.owners = append(t.owners, o)
				return inside, nil
			}
			err = errors.Join(err, revokeRead(t.base, f, t.cfg.UID))
		}
		if !errors.Is(err, ErrNoACL) {
			return "", fmt.Errorf("share %s with the jail: %w", src, err)
		}
		// No ACLs here: copy instead.
	}
	// The chroot's path as of now: a renamed jail (Rename) has moved from where t.root was opened.
	if _, err := stage.Copy(ctx, fdPath(f), filepath.Join(t.Chroot().Root, name)); err != nil {
		return "", fmt.Errorf("copy %s into the jail: %w", src, err)
	}
	return inside, chown()
}

// fdPath names what f has open, for a program that takes a path.
func fdPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// CreateFile creates an empty file name in the chroot for firecracker to write (its log,
// its metrics), owned by the jail's uid with mode 0600.
func (t *Tree) CreateFile(name string) error {
	f, err := t.newFile(name, os.O_WRONLY)
	if err != nil {
		return err
	}
	return f.Close()
}

// NewFile creates name in the chroot (mode 0600, owned by the jail's uid) and returns it open
// for writing: a file smartvm fills for firecracker to read, such as a merged memory file.
func (t *Tree) NewFile(name string) (*os.File, error) { return t.newFile(name, os.O_RDWR) }

// newFile creates name in the chroot, opened with flag, and gives it to the jail's uid through
// what it opened: the jail's uid may put another file at name meanwhile.
func (t *Tree) newFile(name string, flag int) (*os.File, error) {
	f, err := t.root.OpenFile(t.prefix+name, flag|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s in the jail: %w", name, err)
	}
	if err := f.Chown(int(t.cfg.UID), int(t.cfg.GID)); err != nil {
		f.Close()
		return nil, fmt.Errorf("give %s to the jail's uid: %w", name, err)
	}
	return f, nil
}

// ListenUnix listens on a new socket name in the chroot, given to the jail's uid so that
// firecracker can connect to it, and returns it with the socket's path as firecracker sees
// it. The socket file stays when the listener closes; the jail's removal takes it.
func (t *Tree) ListenUnix(name string) (*net.UnixListener, string, error) {
	ln, err := t.root.ListenUnix(t.prefix + name)
	if err != nil {
		return nil, "", fmt.Errorf("listen in the jail: %w", err)
	}
	if err := t.OwnSocket(name); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("give %s to the jail's uid: %w", name, err)
	}
	return ln, "/" + name, nil
}

// Close releases the directories without removing anything.
func (t *Tree) Close() error { return errors.Join(t.root.Close(), t.base.Close()) }

// Remove gives the persistent drives back to their owners and removes the jail's directory
// <base>/<exec name>/<id>, files of the jail's uid included. The jail's processes must have
// ended. It is safe to call more than once.
func (t *Tree) Remove() error {
	err := GiveBack(t.base, t.cfg, t.owners)
	t.owners = nil
	return errors.Join(err, RemoveJail(t.base, t.cfg))
}

// RemoveJail removes cfg's jail directory beneath base (the opened chroot base), as reaping
// does for a jail whose owner is gone. Persistent drives' owners must be given back first
// (GiveBack).
func RemoveJail(base *safedir.Dir, cfg Config) error {
	rel := filepath.Join(cfg.ExecName(), cfg.ID)
	if err := base.RemoveAllOwnedBy(rel, cfg.UID); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	// The exec name's directory is shared with other jails: removed once empty.
	if err := base.Remove(cfg.ExecName()); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return fmt.Errorf("remove jail: %w", err)
	}
	return nil
}

// GiveBack gives the files in owners back to their owners and unlinks them from the jail's
// root in base (the jail's processes must have ended). A name that no longer is the recorded
// file is left to RemoveJail.
func GiveBack(base *safedir.Dir, cfg Config, owners []Owner) error {
	rel := filepath.Join(cfg.ExecName(), cfg.ID, "root")
	var errs []error
	for _, o := range owners {
		name := filepath.Join(rel, o.Name)
		if o.Read && len(o.Handle) > 0 {
			// Through the file itself, wherever its link in the jail went.
			if err := unshareHandle(base, o); err != nil {
				errs = append(errs, fmt.Errorf("take %s back from uid %d: %w", o.Name, o.UID, err))
				continue
			}
		}
		info, err := base.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) || err == nil && (info.Ino != o.Ino || !info.Mode.IsRegular()) {
			continue
		}
		if err == nil && o.Read && len(o.Handle) == 0 {
			err = unshare(base, name, o)
		} else if err == nil && !o.Read {
			err = base.Chown(name, o.UID, o.GID)
		}
		if err == nil {
			err = base.Remove(name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("give %s back to uid %d: %w", o.Name, o.UID, err))
		}
	}
	return errors.Join(errs...)
}

// unshare removes the ACL entry that let a jail's uid read name (a Shared file), if name is
// still the file o records.
func unshare(base *safedir.Dir, name string, o Owner) error {
	f, err := base.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return revokeRecorded(base, f, o) // another file now: RemoveJail removes the name
}

// unshareHandle removes the ACL entry that let a jail's uid read a Shared file, opened by
// its handle (Owner.Handle) on base's filesystem; a file that is gone has none to remove.
func unshareHandle(base *safedir.Dir, o Owner) error {
	mnt, err := base.OpenFile(".", os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer mnt.Close()
	fd, err := unix.OpenByHandleAt(int(mnt.Fd()), unix.NewFileHandle(o.HandleType, o.Handle), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
		return nil // removed, and its entry with it
	}
	if err != nil {
		return fmt.Errorf("open by handle: %w", err)
	}
	f := os.NewFile(uintptr(fd), o.Name)
	defer f.Close()
	return revokeRecorded(base, f, o)
}

// revokeRecorded removes o.UID's ACL entry from f if f is the file o records (a regular file
// of that inode on base's filesystem), and leaves any other file alone.
func revokeRecorded(base *safedir.Dir, f *os.File, o Owner) error {
	info, err := safedir.Stat(f)
	if err != nil || info.Ino != o.Ino || !info.Mode.IsRegular() || info.Dev != base.Dev() {
		return err
	}
	return revokeRead(base, f, o.UID)
}

// Own gives name (a path relative to the chroot's root, such as "drives/rootfs.img") to the
// jail's uid and gid: a file smartvm made there for firecracker to use.
func (t *Tree) Own(name string) error { return t.root.Chown(t.prefix+name, t.cfg.UID, t.cfg.GID) }

// Mkdir makes directory name in the chroot's root (mode 0700), owned by the jail's uid.
func (t *Tree) Mkdir(name string) error {
	if err := t.root.Mkdir(t.prefix+name, 0o700); err != nil {
		return fmt.Errorf("create %s in the jail: %w", name, err)
	}
	return t.Own(name)
}
