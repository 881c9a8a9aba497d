package jailer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
)

// Default uid/gid range for jails: far above login users, the usual subordinate-id ranges
// (100000 + 65536·n) and systemd's dynamic users, and below 2^31 (some tools read uids as
// signed).
const (
	DefaultFirstID = 1_900_000_000
	DefaultIDCount = 65536
)

// ErrIDsExhausted reports that every uid of the range is leased.
var ErrIDsExhausted = errors.New("no free jail uid in the range")

// IDs hands out one uid (used as the gid too) per jail from a range, recording each lease as
// a file in a directory of the runtime root, under a lock, like netdev's address pool. A uid
// that names an account or group of the host is skipped, so a jail never shares a user with
// anything else.
type IDs struct {
	dir         *safedir.Dir
	first, last uint32
}

// OpenIDs opens (creating) the lease directory name inside root. first and count give the
// range; zeros mean DefaultFirstID and DefaultIDCount.
func OpenIDs(root *safedir.Dir, name string, first, count uint32) (*IDs, error) {
	if first == 0 {
		first = DefaultFirstID
	}
	if count == 0 {
		count = DefaultIDCount
	}
	if uint64(first)+uint64(count)-1 >= 1<<32-1 {
		return nil, fmt.Errorf("%w: jail uid range %d+%d passes the largest uid", ErrInvalid, first, count)
	}
	d, err := root.MkdirAll(name, 0o700)
	if err != nil {
		return nil, fmt.Errorf("jail uid leases: %w", err)
	}
	return &IDs{dir: d, first: first, last: first + count - 1}, nil
}

// Close releases the directory.
func (ids *IDs) Close() error { return ids.dir.Close() }

// idsLockRetry is how often a held lease lock is tried again.
const idsLockRetry = 2 * time.Millisecond

func (ids *IDs) locked(ctx context.Context, fn func() error) error {
	for {
		l, ok, err := ids.dir.TryLock("lock", true)
		if err != nil {
			return fmt.Errorf("lock jail uid leases: %w", err)
		}
		if ok {
			defer l.Unlock()
			return fn()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lock jail uid leases %s: %w", ids.dir.Path(), ctx.Err())
		case <-time.After(idsLockRetry):
		}
	}
}

func leaseName(uid uint32) string { return strconv.FormatUint(uint64(uid), 10) }

// Allocate leases the lowest free uid to owner (a VM name) and returns it; an owner that
// holds one gets it again.
func (ids *IDs) Allocate(ctx context.Context, owner string) (uint32, error) {
	var got uint32
	err := ids.locked(ctx, func() error {
		leases, err := ids.leasesLocked()
		if err != nil {
			return err
		}
		for uid, o := range leases {
			if o == owner {
				got = uid
				return nil
			}
		}
		for uid := ids.first; uid <= ids.last; uid++ {
			if _, taken := leases[uid]; taken || hostUses(uid) {
				continue
			}
			f, err := ids.dir.OpenFile(leaseName(uid), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("lease jail uid %d: %w", uid, err)
			}
			_, err = f.WriteString(owner + "\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				ids.dir.Remove(leaseName(uid))
				return fmt.Errorf("lease jail uid %d: %w", uid, err)
			}
			got = uid
			return nil
		}
		return fmt.Errorf("%w %d-%d: remove stopped vms (smartvm gc), or widen the range", ErrIDsExhausted, ids.first, ids.last)
	})
	return got, err
}

// Release ends owner's lease; an owner without one is not an error.
func (ids *IDs) Release(ctx context.Context, owner string) error {
	_, err := ids.ReleaseUnheld(ctx, func(holder string) bool { return holder != owner })
	return err
}

// ReleaseUnheld releases the leases whose holder keep does not vouch for, and returns the
// holders released: those of VMs that died after they leased a uid and before they recorded
// it. keep is asked under the leases' lock, so a holder that leases meanwhile waits for it.
func (ids *IDs) ReleaseUnheld(ctx context.Context, keep func(holder string) bool) ([]string, error) {
	var released []string
	err := ids.locked(ctx, func() error {
		leases, err := ids.leasesLocked()
		if err != nil {
			return err
		}
		for uid, o := range leases {
			if keep(o) {
				continue
			}
			if err := ids.dir.Remove(leaseName(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("release jail uid %d: %w", uid, err)
			}
			released = append(released, o)
		}
		return nil
	})
	return released, err
}

// Transfer hands the uid leased to from over to to: a warm jail's uid becomes the VM's that
// takes the jail. A lease that to holds already is ended first: the caller holds the name to,
// so it is one left by an earlier VM of that name that died before reaping. The lease file is
// replaced whole (a crash leaves the old holder or the new, never a part). When from leases
// none, it fails and changes nothing.
func (ids *IDs) Transfer(ctx context.Context, from, to string) (uint32, error) {
	var got uint32
	err := ids.locked(ctx, func() error {
		leases, err := ids.leasesLocked()
		if err != nil {
			return err
		}
		found := false
		var stale []uint32
		for uid, o := range leases {
			switch o {
			case to:
				stale = append(stale, uid)
			case from:
				got, found = uid, true
			}
		}
		if !found { // refused before anything changes
			return fmt.Errorf("hand jail uid over to %s: %s leases none", to, from)
		}
		for _, uid := range stale {
			if err := ids.dir.Remove(leaseName(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("hand jail uid over to %s: end its stale lease of uid %d: %w", to, uid, err)
			}
		}
		if err := ids.dir.WriteFileAtomic(leaseName(got), []byte(to+"\n"), 0o600); err != nil {
			return fmt.Errorf("hand jail uid %d over to %s: %w", got, to, err)
		}
		return nil
	})
	return got, err
}

// Leases returns the leases: uid → owner.
func (ids *IDs) Leases(ctx context.Context) (map[uint32]string, error) {
	var m map[uint32]string
	err := ids.locked(ctx, func() error {
		var err error
		m, err = ids.leasesLocked()
		return err
	})
	return m, err
}

func (ids *IDs) leasesLocked() (map[uint32]string, error) {
	ents, err := ids.dir.ReadDir(".")
	if err != nil {
		return nil, fmt.Errorf("read jail uid leases: %w", err)
	}
	m := map[uint32]string{}
	for _, e := range ents {
		uid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil || leaseName(uint32(uid)) != e.Name() {
			continue // the lock, or not ours
		}
		b, err := ids.dir.ReadFile(e.Name(), 256)
		if err != nil {
			return nil, fmt.Errorf("read jail uid lease %s: %w", e.Name(), err)
		}
		m[uint32(uid)] = strings.TrimSpace(string(b))
	}
	return m, nil
}

// hostUses reports whether uid names an account or a group of the host.
func hostUses(uid uint32) bool {
	s := leaseName(uid)
	if _, err := user.LookupId(s); err == nil {
		return true
	}
	_, err := user.LookupGroupId(s)
	return err == nil
}
