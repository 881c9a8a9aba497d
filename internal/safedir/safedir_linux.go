package safedir

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// resolve keeps every lookup beneath the directory it starts from, on its filesystem, and off
// symlinks of any kind.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// Dir is a directory held open. Its methods take names relative to it (one or more components,
// never absolute, never with ".."), resolved as the package doc says. A Dir is safe for
// concurrent use. Close it when done.
type Dir struct {
	f    *os.File     // keeps fd open; O_RDONLY|O_DIRECTORY
	fd   atomic.Int32 // -1 once closed, so a number reused by another file is never acted on
	path string
	uid  uint32 // the owner everything this Dir creates, opens as a directory or removes has
	dev  uint64
}

// Path returns the directory's absolute path, as it was opened.
func (d *Dir) Path() string { return d.path }

// Join returns the path of name inside the directory, for handing to other programs.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

// Close closes the directory. It is safe to call more than once.
func (d *Dir) Close() error {
	if d == nil || d.f == nil {
		return nil
	}
	if d.fd.Swap(-1) == -1 {
		return nil
	}
	return d.f.Close()
}

// OpenTrusted opens the directory at path after checking every directory from "/" to it, as
// the package doc says, creating missing ones (mode 0700, owned by the caller) when create is
// set. The directory itself must belong to the caller. A problem with the path is a
// *TrustError (errors.Is ErrUntrusted); a missing directory without create wraps
// fs.ErrNotExist.
func OpenTrusted(path string, create bool) (*Dir, error) {
	if path == "" {
		return nil, errors.New("open directory: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open directory %s: %w", path, err)
	}
	uid := uint32(os.Geteuid())
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /: %w", err)
	}
	closeFD := func() { unix.Close(fd) }
	cur := "/"
	comps := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	if abs == "/" {
		comps = nil
	}
	if err := checkPathDir(fd, cur, uid, len(comps) == 0); err != nil {
		closeFD()
		return nil, err
	}
	for i, c := range comps {
		next := filepath.Join(cur, c)
		last := i == len(comps)-1
		nfd, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		created := false
		if errors.Is(err, unix.ENOENT) && create {
			merr := unix.Mkdirat(fd, c, 0o700)
			if merr != nil && !errors.Is(merr, unix.EEXIST) {
				closeFD()
				return nil, fmt.Errorf("create directory %s: %w", next, merr)
			}
			created = merr == nil
			nfd, err = unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			defer closeFD()
			return nil, componentError(fd, c, next, err)
		}
		closeFD()
		fd = nfd
		if created {
			// Whatever the umask left, the directory is the caller's and private. chmod through
			// the descriptor's /proc link acts on the directory just opened, not on a name.
			if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o700); err != nil {
				closeFD()
				return nil, fmt.Errorf("set mode of %s: %w", next, err)
			}
		}
		if err := checkPathDir(fd, next, uid, last); err != nil {
			closeFD()
			return nil, err
		}
		cur = next
	}
	// Reopen readable, for listing; "." through the O_PATH descriptor is the same directory.
	rfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	closeFD()
	if err != nil {
		return nil, fmt.Errorf("open directory %s: %w", abs, err)
	}
	return newDir(rfd, abs, uid)
}

func newDir(fd int, path string, uid uint32) (*Dir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	d := &Dir{f: os.NewFile(uintptr(fd), path), path: path, uid: uid, dev: st.Dev}
	d.fd.Store(int32(fd))
	return d, nil
}

// componentError explains why component c (path next) of a trusted path could not be opened.
func componentError(parent int, c, next string, err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("open directory %s: %w", next, fs.ErrNotExist)
	}
	var st unix.Stat_t
	if serr := unix.Fstatat(parent, c, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil {
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, _ := os.Readlink(next)
			return &TrustError{Path: next, Problem: fmt.Sprintf("is a symbolic link (to %s) owned by %s; smartvm follows no links on the way to its directories, since one can be swapped to point elsewhere", target, ownerName(st.Uid))}
		case unix.S_IFDIR:
		default:
			return &TrustError{Path: next, Problem: fmt.Sprintf("is not a directory (owned by %s)", ownerName(st.Uid))}
		}
	}
	return fmt.Errorf("open directory %s: %w", next, err)
}

// checkPathDir checks one directory on a trusted path: its owner is uid or root (uid alone for
// the last), and nobody else can write to it unless it is a sticky directory owned by root.
func checkPathDir(fd int, path string, uid uint32, last bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	mode := st.Mode & 0o7777
	switch {
	case st.Uid != uid && st.Uid != 0:
		return &TrustError{Path: path, Problem: fmt.Sprintf("is owned by %s, not by you (%s) or root, so its owner could redirect or replace what smartvm keeps there", ownerName(st.Uid), ownerName(uid))}
	case last && st.Uid != uid:
		return &TrustError{Path: path, Problem: fmt.Sprintf("is owned by %s, not by you (%s)", ownerName(st.Uid), ownerName(uid))}
	case mode&0o022 != 0 && (last || mode&unix.S_ISVTX == 0 || st.Uid != 0):
		return &TrustError{Path: path, Problem: fmt.Sprintf("can be written by other users (mode %04o), so they could rename or replace what smartvm keeps there", mode)}
	}
	return nil
}

// ownerName names a uid for messages: "uid 1001 (mallory)".
func ownerName(uid uint32) string {
	s := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(s); err == nil {
		return "uid " + s + " (" + u.Username + ")"
	}
	return "uid " + s
}

// checkName refuses a name that is empty, absolute or climbs with "..".
func checkName(name string) error {
	if name == "" || filepath.IsAbs(name) {
		return fmt.Errorf("invalid name %q: want a relative path", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return fmt.Errorf("invalid name %q: it must not contain ..", name)
		}
	}
	return nil
}

// openat2 opens name beneath d with the package's resolve rules. A rename elsewhere in the
// tree can make the kernel answer EAGAIN; that is retried.
func (d *Dir) openat2(name string, flags int, mode uint32) (int, error) {
	if err := checkName(name); err != nil {
		return -1, err
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: resolve}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	for range 64 {
		fd, err := unix.Openat2(int(d.fd.Load()), name, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: d.Join(name), Err: explain(err)}
		}
		return fd, nil
	}
	return -1, &fs.PathError{Op: "open", Path: d.Join(name), Err: unix.EAGAIN}
}

// explain turns the resolve errors into ones that say what happened.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%w: a symbolic link is in the way, and smartvm follows none here", ErrUntrusted)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%w: it crosses onto another filesystem or out of its directory", ErrUntrusted)
	}
	return err
}

// parent opens the directory that holds name and returns its descriptor (d's own for a single
// component; the caller closes it with done) and name's last component.
func (d *Dir) parent(name string) (fd int, base string, done func(), err error) {
	if err := checkName(name); err != nil {
		return -1, "", nil, err
	}
	dir, base := filepath.Split(filepath.Clean(name))
	if base == "" || base == "." {
		return -1, "", nil, fmt.Errorf("invalid name %q: want a file or directory name", name)
	}
	if dir == "" {
		return int(d.fd.Load()), base, func() {}, nil
	}
	fd, err = d.openat2(filepath.Clean(dir), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, "", nil, err
	}
	return fd, base, func() { unix.Close(fd) }, nil
}

// OpenDir opens the directory name beneath d, which must belong to d's owner and be writable
// by nobody else (a *TrustError otherwise).
func (d *Dir) OpenDir(name string) (*Dir, error) {
	fd, err := d.openat2(name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	path := d.Join(name)
	if err := checkPathDir(fd, path, d.uid, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newDir(fd, path, d.uid)
}

// Mkdir creates the directory name with mode perm exactly (the umask does not apply). It
// wraps fs.ErrExist when name exists.
func (d *Dir) Mkdir(name string, perm fs.FileMode) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Mkdirat(pfd, base, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "mkdir", Path: d.Join(name), Err: err}
	}
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: d.Join(name), Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "chmod", Path: d.Join(name), Err: err}
	}
	return nil
}

// MkdirAll creates name and any missing parents (mode perm) and returns it opened, checked as
// OpenDir checks.
func (d *Dir) MkdirAll(name string, perm fs.FileMode) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	comps := strings.Split(filepath.Clean(name), "/")
	for i := range comps {
		err := d.Mkdir(filepath.Join(comps[:i+1]...), perm)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
	}
	return d.OpenDir(name)
}

// OpenFile opens name beneath d (never through a symlink). With O_CREAT|O_EXCL the new file
// gets mode perm exactly, whatever the umask.
func (d *Dir) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	fd, err := d.openat2(name, flag, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	if flag&(unix.O_CREAT|unix.O_EXCL) == unix.O_CREAT|unix.O_EXCL {
		if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
			unix.Close(fd)
			return nil, &fs.PathError{Op: "chmod", Path: d.Join(name), Err: err}
		}
	}
	return os.NewFile(uintptr(fd), d.Join(name)), nil
}

// OpenRegular opens name for reading. It must be a regular file owned by d's owner: a FIFO or
// a socket is refused without blocking, and so is a file another user planted.
func (d *Dir) OpenRegular(name string) (*os.File, error) {
	fd, err := d.openat2(name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: d.Join(name), Err: err}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: d.Join(name), Err: fmt.Errorf("%w: not a regular file (%s)", ErrUntrusted, TypeName(st.Mode))}
	case st.Uid != d.uid:
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: d.Join(name), Err: fmt.Errorf("%w: owned by %s, not %s", ErrUntrusted, ownerName(st.Uid), ownerName(d.uid))}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), d.Join(name)), nil
}

// ReadFile reads the regular file name (see OpenRegular), refusing one larger than limit bytes.
func (d *Dir) ReadFile(name string, limit int64) ([]byte, error) {
	f, err := d.OpenRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", d.Join(name), limit)
	}
	return b, nil
}

// WriteFileAtomic replaces name with data so that readers see the old or the new content,
// never a part: a new temporary file beside it (mode perm), fsync, renameat, then an fsync of
// the directory.
func (d *Dir) WriteFileAtomic(name string, data []byte, perm fs.FileMode) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	var b [8]byte
	rand.Read(b[:])
	tmp := "." + base + ".tmp-" + hex.EncodeToString(b[:])
	fd, err := unix.Openat(pfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: d.Join(name), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.Join(tmp))
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm.Perm())
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(pfd, tmp, pfd, base)
	}
	if err != nil {
		unix.Unlinkat(pfd, tmp, 0)
		return &fs.PathError{Op: "write", Path: d.Join(name), Err: err}
	}
	return unix.Fsync(pfd)
}

// Remove removes the file, socket, symlink or empty directory name. It wraps fs.ErrNotExist
// when there is none.
func (d *Dir) Remove(name string) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	err = unix.Unlinkat(pfd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
	}
	if err != nil {
		return &fs.PathError{Op: "remove", Path: d.Join(name), Err: err}
	}
	return nil
}

// ListenUnix listens on a new Unix socket name beneath d. It binds through d's descriptor
// (/proc/self/fd), so no symbolic link on the way is followed, whoever can write where the
// socket goes. Closing the listener leaves the socket file: Remove removes it.
func (d *Dir) ListenUnix(name string) (*net.UnixListener, error) {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return nil, err
	}
	defer done()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", d.Join(name), err)
	}
	// The descriptor in the bound path is closed once this returns, and its number reused.
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// Rename moves oldName beneath d to newName beneath nd (which may be d), replacing what is
// there as rename(2) does.
func (d *Dir) Rename(oldName string, nd *Dir, newName string) error {
	return d.rename(oldName, nd, newName, 0)
}

// RenameNoReplace is Rename that fails, with an error wrapping fs.ErrExist, when newName
// exists.
func (d *Dir) RenameNoReplace(oldName string, nd *Dir, newName string) error {
	return d.rename(oldName, nd, newName, unix.RENAME_NOREPLACE)
}

func (d *Dir) rename(oldName string, nd *Dir, newName string, flags uint) error {
	ofd, obase, odone, err := d.parent(oldName)
	if err != nil {
		return err
	}
	defer odone()
	nfd, nbase, ndone, err := nd.parent(newName)
	if err != nil {
		return err
	}
	defer ndone()
	if err := unix.Renameat2(ofd, obase, nfd, nbase, flags); err != nil {
		return &os.LinkError{Op: "rename", Old: d.Join(oldName), New: nd.Join(newName), Err: err}
	}
	return nil
}

// Lstat describes name without following it.
func (d *Dir) Lstat(name string) (Info, error) {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return Info{}, err
	}
	defer done()
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Info{}, &fs.PathError{Op: "lstat", Path: d.Join(name), Err: err}
	}
	return infoOf(&st), nil
}

func infoOf(st *unix.Stat_t) Info {
	mode := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if st.Mode&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return Info{Mode: mode, UID: st.Uid, GID: st.Gid, Size: st.Size, Blocks: st.Blocks, Dev: st.Dev, Ino: st.Ino, ModTime: time.Unix(st.Mtim.Unix())}
}

// Stat describes the open file f as Lstat does.
func Stat(f *os.File) (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Info{}, &fs.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return infoOf(&st), nil
}

// UID returns the owner a Dir's entries must have.
func (d *Dir) UID() uint32 { return d.uid }

// ReadDir lists the directory name ("." for d itself). The entries' Type comes from the
// directory itself; never call their Info, which would look the name up again by path.
func (d *Dir) ReadDir(name string) ([]fs.DirEntry, error) {
	fd, err := d.openat2(name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.Join(name))
	defer f.Close()
	return f.ReadDir(-1)
}

// RemoveAll removes name and everything beneath it. It never follows a symlink (a link is
// removed, not what it points to), never descends onto another filesystem, and stops with an
// error (leaving the rest) at an entry that belongs to anybody but d's owner. A missing name
// is not an error.
func (d *Dir) RemoveAll(name string) error { return d.RemoveAllOwnedBy(name) }

// RemoveAllOwnedBy is RemoveAll that also removes entries owned by the users in owners: a
// jail's tree, say, where the jailed process (another uid) made files. Every other rule of
// RemoveAll holds.
func (d *Dir) RemoveAllOwnedBy(name string, owners ...uint32) error {
	pfd, base, done, err := d.parent(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer done()
	return d.removeAt(pfd, base, d.Join(name), owners)
}

func (d *Dir) removeAt(pfd int, base, path string, owners []uint32) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Uid != d.uid && !slices.Contains(owners, st.Uid) {
		return &fs.PathError{Op: "remove", Path: path, Err: fmt.Errorf("%w: owned by %s, not %s; left in place", ErrUntrusted, ownerName(st.Uid), ownerName(d.uid))}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(pfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return &fs.PathError{Op: "remove", Path: path, Err: err}
		}
		return nil
	}
	if st.Dev != d.dev {
		return &fs.PathError{Op: "remove", Path: path, Err: fmt.Errorf("%w: on another filesystem (a mount?); left in place", ErrUntrusted)}
	}
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: explain(err)}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		return &fs.PathError{Op: "remove", Path: path, Err: fmt.Errorf("%w: replaced while being removed", ErrUntrusted)}
	}
	for {
		ents, err := f.ReadDir(256)
		for _, e := range ents {
			if err := d.removeAt(fd, e.Name(), filepath.Join(path, e.Name()), owners); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || len(ents) == 0 {
			break
		}
		if err != nil {
			return &fs.PathError{Op: "readdir", Path: path, Err: err}
		}
	}
	if err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: path, Err: err}
	}
	return nil
}

// CheckTree reports the first thing under name that RemoveAll would refuse, or that smartvm
// never makes itself: a symlink, an entry owned by anybody but d's owner, or a directory on
// another filesystem. It returns nil for a tree smartvm could have made.
func (d *Dir) CheckTree(name string) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	return d.checkAt(pfd, base, d.Join(name), 0)
}

func (d *Dir) checkAt(pfd int, base, path string, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%s is a symbolic link", path)
	case st.Uid != d.uid:
		return fmt.Errorf("%s is owned by %s", path, ownerName(st.Uid))
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil
	case st.Dev != d.dev:
		return fmt.Errorf("%s is on another filesystem", path)
	case depth > 16:
		return fmt.Errorf("%s is nested deeper than smartvm nests", path)
	}
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: explain(err)}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return &fs.PathError{Op: "readdir", Path: path, Err: err}
	}
	for _, e := range ents {
		if err := d.checkAt(fd, e.Name(), filepath.Join(path, e.Name()), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// TypeName names a file type for messages.
func TypeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "unknown file type"
}

// LockHolder returns the pid of a process that holds a flock on f's file, from /proc/locks,
// or 0 when it cannot tell.
func LockHolder(f *os.File) int {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; a waiter's line has "->".
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] == "->" || fields[1] != "FLOCK" {
			continue
		}
		if fields[5] == want {
			pid, _ := strconv.Atoi(fields[4])
			return pid
		}
	}
	return 0
}

// Chtimes sets name's access and modification times, without following it.
func (d *Dir) Chtimes(name string, t time.Time) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chtimes", Path: d.Join(name), Err: err}
	}
	return nil
}

// Lock is an exclusive flock held through an open file: Unlock (closing the file) releases it.
type Lock struct{ f *os.File }

// File returns the locked file.
func (l *Lock) File() *os.File { return l.f }

// Unlock releases the lock.
func (l *Lock) Unlock() error { return l.f.Close() }

// TryLock takes an exclusive flock on file name beneath d without waiting, creating the file
// (mode 0600) when create is set. ok is false when another open file holds it.
func (d *Dir) TryLock(name string, create bool) (l *Lock, ok bool, err error) {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := d.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, false, err
	}
	ok, err = Flock(f)
	if err != nil || !ok {
		f.Close()
		return nil, false, err
	}
	return &Lock{f: f}, true, nil
}

// Flock takes an exclusive flock on f without blocking; ok is false when another open file
// holds it.
func Flock(f *os.File) (ok bool, err error) { return flock(f, unix.LOCK_EX) }

// FlockShared takes a shared flock on f without blocking; ok is false when another open file
// holds an exclusive one.
func FlockShared(f *os.File) (ok bool, err error) { return flock(f, unix.LOCK_SH) }

func flock(f *os.File, how int) (ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how|unix.LOCK_NB)
			if !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if errors.Is(ferr, unix.EWOULDBLOCK) {
		return false, nil
	}
	return ferr == nil, ferr
}

// OpenInput opens a file smartvm reads or hands to Firecracker (a kernel, an initrd, a drive,
// a manifest) without blocking: a FIFO or a socket there would otherwise hang the open, or
// Firecracker. It must be a regular file, or a block device when device is set. write opens
// it for reading and writing. The file is returned in blocking mode.
func OpenInput(path string, write, device bool) (*os.File, error) {
	flag := unix.O_RDONLY
	if write {
		flag = unix.O_RDWR
	}
	fd, err := unix.Open(path, flag|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.EOPNOTSUPP) {
		// A FIFO without a reader (opened for writing) or a socket.
		return nil, &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w: a FIFO or socket, not a file", ErrUntrusted)}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	switch t := st.Mode & unix.S_IFMT; {
	case t == unix.S_IFREG, t == unix.S_IFBLK && device:
	default:
		unix.Close(fd)
		want := "a regular file"
		if device {
			want = "a regular file or a block device"
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w: a %s, not %s", ErrUntrusted, TypeName(st.Mode), want)}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Chmod sets the permission bits of name ("." for d itself), without following it.
func (d *Dir) Chmod(name string, perm fs.FileMode) error {
	fd, err := d.openat2(name, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// chmod through the descriptor's /proc link acts on the file just opened, not on a name.
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "chmod", Path: d.Join(name), Err: err}
	}
	return nil
}

// WriteFile replaces the file at path with data atomically, as Dir.WriteFileAtomic does,
// relative to path's directory held open: a temporary file beside it (mode perm exactly),
// fsync, renameat, and an fsync of the directory. It is the one atomic write smartvm uses for
// small files outside a Dir.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	d, err := newDir(fd, dir, uint32(os.Geteuid()))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.WriteFileAtomic(filepath.Base(path), data, perm)
}

// Chown sets the owner and group of name, without following it.
func (d *Dir) Chown(name string, uid, gid uint32) error { return d.ChownIf(name, uid, gid, nil) }

// ChownIf is Chown where check (unless nil) accepts what name is: it is given the Info of the
// very file it then changes, not of whatever others may have put at name meanwhile.
func (d *Dir) ChownIf(name string, uid, gid uint32, check func(Info) error) error {
	fd, err := d.openat2(name, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if check != nil {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return &fs.PathError{Op: "stat", Path: d.Join(name), Err: err}
		}
		if err := check(infoOf(&st)); err != nil {
			return err
		}
	}
	if err := unix.Fchownat(fd, "", int(uid), int(gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chown", Path: d.Join(name), Err: err}
	}
	return nil
}

// Link makes name, beneath d, a hard link to the file f has open (not to whatever its path
// names by now). It fails with an error wrapping unix.EXDEV (errors.Is ErrCrossDevice) when
// f is on another filesystem.
func (d *Dir) Link(f *os.File, name string) error {
	pfd, base, done, err := d.parent(name)
	if err != nil {
		return err
	}
	defer done()
	err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), pfd, base, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.EXDEV) {
		err = fmt.Errorf("%w: %w", ErrCrossDevice, err)
	}
	if err != nil {
		return &fs.PathError{Op: "link", Path: d.Join(name), Err: err}
	}
	return nil
}

// Dev returns the device number of d's filesystem.
func (d *Dir) Dev() uint64 { return d.dev }
