package smartvm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/smartvm/smartvm/netdev"
)

// MaxClones bounds CloneSpec.Count.
const MaxClones = 1024

// MaxCloneNumber is the highest n of a clone's name <prefix><n>: names that are taken are
// skipped up to it.
const MaxCloneNumber = 2 * MaxClones

// CloneSpec says how Clone starts VMs from one snapshot.
type CloneSpec struct {
	// Count is how many VMs to start: 1 to MaxClones.
	Count int `json:"count"`
	// NamePrefix names the clones <NamePrefix><n>, n counting from 1 and skipping names
	// that are taken. Empty means the snapshot's name and "-".
	NamePrefix string `json:"name_prefix,omitempty"`
}

// Clone starts cs.Count independent VMs from snap, concurrently, each as Restore under a
// name of its own (RestoreSpec.Name) does, and returns them in the order of their names. The
// VM the snapshot was taken of may still run. A clone learns its name from MMDS when the
// snapshot's VM has MMDS (see RestoreSpec.MMDSData).
//
// Clone is all or nothing: if one clone fails to start, the others are killed and closed,
// and the error of each failure is returned. A snapshot with a managed network needs one /30
// of the address pool per clone (for the veth pair of its namespace): more clones than the
// pool holds are refused before any starts, with an error wrapping netdev.ErrPoolExhausted.
func (mgr *Manager) Clone(ctx context.Context, snap Snapshot, cs CloneSpec, opts ...StartOption) ([]*Machine, error) {
	if err := snap.CheckClones(cs); err != nil {
		return nil, err
	}
	// Checked once here, not by each clone's restore: hashing the state file per clone
	// would repeat the same work Count times.
	if err := checkSnapshotFiles(&snap, snap.Spec.WithDefaults().MemoryMiB); err != nil {
		return nil, fmt.Errorf("clone %s: %w", snap.Dir, err)
	}
	prefix := cs.Prefix(snap)
	var next atomic.Int64
	ms := make([]*Machine, cs.Count)
	errs := make([]error, cs.Count)
	var wg sync.WaitGroup
	for i := range ms {
		wg.Go(func() { ms[i], errs[i] = mgr.restoreNext(ctx, snap, prefix, &next, opts) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		var closes []error
		for _, m := range ms {
			if m != nil {
				closes = append(closes, m.Close())
				if m.record().st.Keep { // a start that failed leaves no record (KeepExited)
					closes = append(closes, mgr.Remove(context.WithoutCancel(ctx), m.Name()))
				}
			}
		}
		if cerr := errors.Join(closes...); cerr != nil {
			mgr.log.Warn("close clones after a failed clone", "err", cerr)
		}
		return nil, err
	}
	sortMachines(ms)
	return ms, nil
}

// CheckClones refuses, before anything starts, clones that cannot all start: a count out of
// range, a name prefix that makes invalid names, and more clones than the address pool of a
// snapshot with a managed network holds (an error wrapping netdev.ErrPoolExhausted).
func (snap Snapshot) CheckClones(cs CloneSpec) error {
	if cs.Count < 1 || cs.Count > MaxClones {
		return fmt.Errorf("clone %s: count %d: give 1 to %d", snap.Dir, cs.Count, MaxClones)
	}
	prefix := cs.Prefix(snap)
	// The longest name Clone may try must be valid too.
	if last := prefix + strconv.Itoa(MaxCloneNumber); !validVMName(last) {
		return fmt.Errorf("clone %s: name prefix %q: clone names (%s...) must be 1 to 64 letters, digits and '-', not starting with '-'", snap.Dir, prefix, prefix+"1")
	}
	if n := snap.Spec.Network; n != nil {
		if err := checkPoolHolds(n.Pool, cs.Count); err != nil {
			return fmt.Errorf("clone %s: %w", snap.Dir, err)
		}
	}
	return nil
}

// Prefix is the prefix of the clones' names: NamePrefix, or the snapshot's name and "-".
func (cs CloneSpec) Prefix(snap Snapshot) string {
	if cs.NamePrefix == "" {
		return snap.Name + "-"
	}
	return cs.NamePrefix
}

// restoreNext restores snap under the next free name <prefix><n>.
func (mgr *Manager) restoreNext(ctx context.Context, snap Snapshot, prefix string, next *atomic.Int64, opts []StartOption) (*Machine, error) {
	for {
		n := next.Add(1)
		name := prefix + strconv.FormatInt(n, 10)
		m, err := mgr.restore(ctx, snap, RestoreSpec{Name: name}, true, opts)
		if errors.Is(err, ErrExists) && n < MaxCloneNumber && ctx.Err() == nil {
			continue // taken: the next name
		}
		return m, err
	}
}

// checkPoolHolds refuses count clones when the pool (DefaultNetworkPool if empty) has fewer
// /30s than that.
func checkPoolHolds(pool string, count int) error {
	if pool == "" {
		pool = DefaultNetworkPool
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil {
		return fmt.Errorf("network pool %q: %w", pool, err)
	}
	if bits := p.Bits(); bits <= 30 && 30-bits < 30 {
		if holds := 1 << (30 - bits); count > holds {
			return fmt.Errorf("%d clones need %d /30s of the address pool %s, which holds %d: clone fewer, or take the snapshot of a vm with a larger network pool: %w",
				count, count, p, holds, netdev.ErrPoolExhausted)
		}
	}
	return nil
}

// sortMachines orders ms by name, shorter names (smaller numbers) first.
func sortMachines(ms []*Machine) {
	slices.SortFunc(ms, func(a, b *Machine) int {
		return cmp.Or(cmp.Compare(len(a.name), len(b.name)), strings.Compare(a.name, b.name))
	})
}
