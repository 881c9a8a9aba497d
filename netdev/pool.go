package netdev

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/smartvm/smartvm/internal/safedir"
)

// DefaultPool is the address range NICs get their /30 from when none is configured.
const DefaultPool = "172.16.0.0/16"

// subnetBits is the size of every lease: a /30 holds the host end and the guest.
const subnetBits = 30

// lockRetry is how often a contended pool lock is tried again.
const lockRetry = 2 * time.Millisecond

// Pool hands out /30 subnets of an IPv4 range. Leases are files in a directory (one per /30,
// under leases/), guarded by a file lock (the file "lock"), so concurrent processes sharing the
// directory never hand out the same /30. A lease belongs to an owner (a VM name) until
// Release. Leases outlive the process: reclaim those of dead owners with Reclaim.
//
// The zero Pool is not usable; create one with NewPool.
type Pool struct {
	dir    string
	prefix netip.Prefix
}

// Lease is one leased /30: its subnet, the owner it was leased to, and when.
type Lease struct {
	Subnet  netip.Prefix `json:"subnet"`
	Owner   string       `json:"owner"` // empty when the lease file cannot be read
	Created time.Time    `json:"created"`
}

// NewPool returns the pool of prefix (an IPv4 network of /30 or larger; the zero prefix means
// DefaultPool) whose state lives in dir. The directory is created on first use, mode 0700.
// Pools of different directories must not overlap: nothing coordinates them.
func NewPool(dir string, prefix netip.Prefix) (*Pool, error) {
	if dir == "" {
		return nil, errors.New("address pool: no state directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("address pool directory %s: %w", dir, err)
	}
	if !prefix.IsValid() {
		prefix = netip.MustParsePrefix(DefaultPool)
	}
	if err := CheckPool(prefix); err != nil {
		return nil, err
	}
	return &Pool{dir: abs, prefix: prefix}, nil
}

// CheckPool reports whether prefix can be an address pool: an IPv4 network of /30 or larger
// without host bits set. It touches nothing.
func CheckPool(prefix netip.Prefix) error {
	if !prefix.IsValid() || !prefix.Addr().Is4() || prefix.Bits() > subnetBits {
		return fmt.Errorf("address pool %s: want an IPv4 network of /%d or larger, such as %s", prefix, subnetBits, DefaultPool)
	}
	if prefix.Masked() != prefix {
		return fmt.Errorf("address pool %s: host bits are set; did you mean %s?", prefix, prefix.Masked())
	}
	return nil
}

// Prefix returns the pool's address range.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Dir returns the pool's state directory.
func (p *Pool) Dir() string { return p.dir }

// Allocate leases the lowest free /30 to owner. It waits for the pool lock until ctx ends.
// Errors: ErrPoolExhausted when no /30 is free.
func (p *Pool) Allocate(ctx context.Context, owner string) (netip.Prefix, error) {
	if err := validOwner(owner); err != nil {
		return netip.Prefix{}, fmt.Errorf("allocate from %s: %w", p.prefix, err)
	}
	var got []netip.Prefix
	err := p.locked(ctx, func() error {
		var err error
		got, err = p.allocateLocked(owner, 1, nil)
		return err
	})
	if err != nil {
		return netip.Prefix{}, err
	}
	return got[0], nil
}

// Release ends every lease of owner. Releasing an owner without leases is not an error.
func (p *Pool) Release(ctx context.Context, owner string) error {
	return p.locked(ctx, func() error { return p.releaseLocked(owner) })
}

// Leases returns the current leases, ordered by subnet.
func (p *Pool) Leases(ctx context.Context) ([]Lease, error) {
	var ls []Lease
	err := p.locked(ctx, func() error {
		var err error
		ls, err = p.leasesLocked()
		return err
	})
	return ls, err
}

// locked runs fn holding the pool's file lock, waiting for it until ctx ends.
func (p *Pool) locked(ctx context.Context, fn func() error) error {
	if err := os.MkdirAll(p.leaseDir(), 0o700); err != nil {
		return fmt.Errorf("address pool directory: %w", err)
	}
	l := flock.New(filepath.Join(p.dir, "lock"))
	ok, err := l.TryLockContext(ctx, lockRetry)
	if err != nil || !ok {
		return fmt.Errorf("lock address pool %s: %w", p.dir, errors.Join(err, ctx.Err()))
	}
	defer l.Unlock()
	return fn()
}

func (p *Pool) leaseDir() string { return filepath.Join(p.dir, "leases") }

// leaseFile names the lease of subnet s: "172.16.0.4-30.json".
func (p *Pool) leaseFile(s netip.Prefix) string {
	return filepath.Join(p.leaseDir(), fmt.Sprintf("%s-%d.json", s.Addr(), s.Bits()))
}

// parseLeaseFile is the inverse of leaseFile's base name.
func parseLeaseFile(name string) (netip.Prefix, bool) {
	base, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return netip.Prefix{}, false
	}
	addr, bits, ok := strings.Cut(base, "-")
	if !ok {
		return netip.Prefix{}, false
	}
	s, err := netip.ParsePrefix(addr + "/" + bits)
	return s, err == nil && s.Masked() == s
}

// used returns the leased subnets, from the file names alone.
func (p *Pool) used() (map[netip.Prefix]bool, error) {
	ents, err := os.ReadDir(p.leaseDir())
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	m := make(map[netip.Prefix]bool, len(ents))
	for _, e := range ents {
		if s, ok := parseLeaseFile(e.Name()); ok {
			m[s] = true
		}
	}
	return m, nil
}

// allocateLocked leases n /30s to owner, skipping those for which avoid reports true. The
// caller holds the lock. It is all or nothing.
func (p *Pool) allocateLocked(owner string, n int, avoid func(netip.Prefix) bool) ([]netip.Prefix, error) {
	used, err := p.used()
	if err != nil {
		return nil, err
	}
	var got []netip.Prefix
	first := binary.BigEndian.Uint32(p.prefix.Addr().AsSlice())
	count := uint64(1) << (subnetBits - p.prefix.Bits())
	for i := uint64(0); i < count && len(got) < n; i++ {
		s := netip.PrefixFrom(netip.AddrFrom4(be32(first+uint32(i)*4)), subnetBits)
		if used[s] || (avoid != nil && avoid(s)) {
			continue
		}
		got = append(got, s)
	}
	if len(got) < n {
		return nil, fmt.Errorf("allocate %d /%d from %s for %s: %w (%d leased); release leases of ended VMs or configure a larger pool",
			n, subnetBits, p.prefix, owner, ErrPoolExhausted, len(used))
	}
	now := time.Now().UTC()
	for i, s := range got {
		if err := writeJSON(p.leaseFile(s), Lease{Subnet: s, Owner: owner, Created: now}); err != nil {
			for _, done := range got[:i] {
				os.Remove(p.leaseFile(done))
			}
			return nil, fmt.Errorf("lease %s: %w", s, err)
		}
	}
	return got, nil
}

func be32(v uint32) [4]byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return b
}

// leasesLocked reads every lease. A lease file that cannot be parsed still holds its subnet
// (it is skipped by Allocate) but is reported with an empty owner.
func (p *Pool) leasesLocked() ([]Lease, error) {
	used, err := p.used()
	if err != nil {
		return nil, err
	}
	ls := make([]Lease, 0, len(used))
	for s := range used {
		var l Lease
		if err := readJSON(p.leaseFile(s), &l); err != nil {
			l = Lease{}
		}
		l.Subnet = s
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	return ls, nil
}

func (p *Pool) releaseLocked(owner string) error {
	ls, err := p.leasesLocked()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range ls {
		if l.Owner != owner {
			continue
		}
		if err := os.Remove(p.leaseFile(l.Subnet)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("release lease %s of %s: %w", l.Subnet, owner, err))
		}
	}
	return errors.Join(errs...)
}

// writeJSON writes v to path atomically (safedir.WriteFile: a temporary file beside it,
// fsync, rename, directory fsync), mode 0600.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return safedir.WriteFile(path, append(b, '\n'), 0o600)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}
