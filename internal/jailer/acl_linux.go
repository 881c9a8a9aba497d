package jailer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/safedir"
)

// A file's POSIX access ACL, as the kernel stores it in the system.posix_acl_access extended
// attribute: a version, then entries of a tag, permissions and an id, sorted by tag and id.
const (
	aclXattr   = "system.posix_acl_access"
	aclVersion = 2

	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20

	aclNoID  = 0xffffffff
	aclRead  = 4
	aclEntry = 8 // bytes
)

type aclEnt struct {
	tag, perm uint16
	id        uint32
}

// ErrNoACL reports a filesystem without POSIX ACLs, a file whose ACL holds as many entries as
// its filesystem stores, or one whose ACL's mask an entry for a jail's uid would lift.
var ErrNoACL = errors.New("the filesystem has no POSIX ACLs")

// aclMaxSize bounds an ACL read (the kernel's XATTR_SIZE_MAX).
const aclMaxSize = 64 << 10

// readACL returns f's access ACL; a file without one has the three entries of its mode.
func readACL(f *os.File) ([]aclEnt, error) {
	// A file several jails share holds an entry for each: its size is asked first.
	n, err := unix.Fgetxattr(int(f.Fd()), aclXattr, nil)
	var buf []byte
	for err == nil {
		buf = make([]byte, min(n+16*aclEntry, aclMaxSize))
		if n, err = unix.Fgetxattr(int(f.Fd()), aclXattr, buf); !errors.Is(err, unix.ERANGE) || len(buf) == aclMaxSize {
			break
		}
		n, err = unix.Fgetxattr(int(f.Fd()), aclXattr, nil) // it grew meanwhile
	}
	switch {
	case errors.Is(err, unix.ENODATA):
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return nil, err
		}
		m := uint16(st.Mode)
		return []aclEnt{{aclUserObj, m >> 6 & 7, aclNoID}, {aclGroupObj, m >> 3 & 7, aclNoID}, {aclOther, m & 7, aclNoID}}, nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return nil, ErrNoACL
	case err != nil:
		return nil, err
	case n < 4 || (n-4)%aclEntry != 0 || binary.LittleEndian.Uint32(buf) != aclVersion:
		return nil, fmt.Errorf("an access ACL of %d bytes that is not version %d's", n, aclVersion)
	}
	var es []aclEnt
	for b := buf[4:n]; len(b) > 0; b = b[aclEntry:] {
		es = append(es, aclEnt{binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint16(b[2:]), binary.LittleEndian.Uint32(b[4:])})
	}
	return es, nil
}

// writeACL sets f's access ACL to es, with the mask the named entries need; without named
// entries it removes the ACL and sets the mode its entries say.
func writeACL(f *os.File, es []aclEnt) error {
	es = slices.DeleteFunc(slices.Clone(es), func(e aclEnt) bool { return e.tag == aclMask })
	var mask uint16
	named := false
	perm := map[uint16]uint16{}
	for _, e := range es {
		switch e.tag {
		case aclUser, aclGroup:
			named = true
			mask |= e.perm
		case aclGroupObj:
			mask |= e.perm
		}
		perm[e.tag] = e.perm
	}
	fd := int(f.Fd())
	if !named {
		if err := unix.Fremovexattr(fd, aclXattr); err != nil && !errors.Is(err, unix.ENODATA) {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		mode := st.Mode&^0o777 | uint32(perm[aclUserObj])<<6 | uint32(perm[aclGroupObj])<<3 | uint32(perm[aclOther])
		return unix.Fchmod(fd, mode&0o7777)
	}
	es = append(es, aclEnt{aclMask, mask, aclNoID})
	slices.SortFunc(es, func(a, b aclEnt) int {
		if a.tag != b.tag {
			return int(a.tag) - int(b.tag)
		}
		return int(int64(a.id) - int64(b.id))
	})
	buf := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range es {
		buf = binary.LittleEndian.AppendUint16(buf, e.tag)
		buf = binary.LittleEndian.AppendUint16(buf, e.perm)
		buf = binary.LittleEndian.AppendUint32(buf, e.id)
	}
	err := unix.Fsetxattr(fd, aclXattr, buf, 0)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return ErrNoACL
	case errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ERANGE):
		// More entries than the filesystem stores in one ACL (ext4: a block's worth).
		return fmt.Errorf("%w: an ACL of %d entries is more than the filesystem holds: %w", ErrNoACL, len(es), err)
	}
	return err
}

// aclLockName is the lock file, in the chroot base, that editACL holds.
const aclLockName = ".acl.lock"

// editACL runs edit on f's access ACL and writes the result, holding an exclusive flock on
// the lock file in the chroot base meanwhile, so that starts in this and other processes that
// lend f to jails at once do not lose each other's entries. The lock is never on f itself:
// every jail's uid that f is shared with can open f and lock it for good.
func editACL(base *safedir.Dir, f *os.File, edit func([]aclEnt) ([]aclEnt, error)) error {
	l, err := base.OpenFile(aclLockName, os.O_RDWR|os.O_CREATE|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return fmt.Errorf("open the ACL lock: %w", err)
	}
	defer l.Close() // releases the lock
	for {
		err = unix.Flock(int(l.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", base.Join(aclLockName), err)
	}
	es, err := readACL(f)
	if err != nil {
		return err
	}
	if es, err = edit(es); err != nil {
		return err
	}
	return writeACL(f, es)
}

// grantRead adds to f's access ACL an entry that lets uid read it (ErrNoACL where the
// filesystem has no ACLs), locked in base, the chroot base. The owner and mode stay: whoever
// could not open the file still cannot, and uid reads it only through a path it can reach.
// The mask must then let uid read: where it withholds read (or more) from the file's group or
// another entry that lifting it would grant them, the file is not shared (ErrNoACL).
func grantRead(base *safedir.Dir, f *os.File, uid uint32) error {
	return editACL(base, f, func(es []aclEnt) ([]aclEnt, error) {
		// An entry of the group class grants its own permissions within the mask (an ACL
		// of three entries, a mode's, has none).
		mask := uint16(7)
		for _, e := range es {
			if e.tag == aclMask {
				mask = e.perm
			}
		}
		after, mine := slices.Clone(es), false
		for i, e := range after {
			if e.tag == aclUser && e.id == uid {
				after[i].perm |= aclRead
				mine = true
			}
		}
		if !mine {
			after = append(after, aclEnt{aclUser, aclRead, uid})
		}
		var newMask uint16
		for _, e := range after {
			if e.tag == aclUser || e.tag == aclGroup || e.tag == aclGroupObj {
				newMask |= e.perm
			}
		}
		for i, e := range es {
			if e.tag != aclUser && e.tag != aclGroup && e.tag != aclGroupObj {
				continue
			}
			may := e.perm & mask
			if e.tag == aclUser && e.id == uid {
				may |= aclRead
			}
			if after[i].perm&newMask&^may != 0 {
				return nil, fmt.Errorf("%w: the mask of its ACL withholds permissions from its group or another entry, which an entry for uid %d would grant them", ErrNoACL, uid)
			}
		}
		return after, nil
	})
}

// revokeRead removes uid's entry from f's access ACL (grantRead's); with the last named
// entry gone, the ACL goes and the file has its mode as before. It locks in base as
// grantRead does.
func revokeRead(base *safedir.Dir, f *os.File, uid uint32) error {
	return editACL(base, f, func(es []aclEnt) ([]aclEnt, error) {
		return slices.DeleteFunc(es, func(e aclEnt) bool { return e.tag == aclUser && e.id == uid }), nil
	})
}
