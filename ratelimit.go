package smartvm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/smartvm/smartvm/fcapi"
)

// RateLimitUpdate changes the rate limiters of a running VM's drives and network interfaces,
// as Firecracker's RateLimiter: a token bucket for bandwidth (bytes) and one for operations.
// In a limiter given here, a bucket left nil stays as it is, and a bucket with Size 0 (or
// RefillTime 0) removes that limit. The zero value changes nothing.
type RateLimitUpdate struct {
	// Drives maps drive IDs ("rootfs", "drive1", ...) to their new limiter.
	Drives map[string]fcapi.RateLimiter `json:"drives,omitempty"`
	// Interfaces maps interface IDs ("eth0", ...) to their new limiters.
	Interfaces map[string]InterfaceRateLimits `json:"interfaces,omitempty"`
}

// InterfaceRateLimits are an interface's limiters for received (Rx) and sent (Tx) traffic;
// nil leaves that direction as it is.
type InterfaceRateLimits struct {
	Rx *fcapi.RateLimiter `json:"rx,omitempty"`
	Tx *fcapi.RateLimiter `json:"tx,omitempty"`
}

// UpdateRateLimits applies u to the running (or paused) VM, drive by drive then interface by
// interface, in ID order, and stops at the first failure (those before it stay applied).
// What it applied is recorded in the VM's spec (Spec, state.json), so Info and a later
// snapshot show it. It returns an error wrapping ErrNotRunning when the VM has ended, and
// Firecracker's *fcapi.APIError for an ID the VM does not have or a limiter it refuses.
func (m *Machine) UpdateRateLimits(ctx context.Context, u RateLimitUpdate) error {
	if m.exited() {
		return fmt.Errorf("update vm %s: %w", m.name, ErrNotRunning)
	}
	var done RateLimitUpdate
	err := m.patchRateLimits(ctx, u, &done)
	if rerr := m.recordRateLimits(ctx, done); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return err
	}
	m.log.Info("rate limits updated", "drives", len(u.Drives), "interfaces", len(u.Interfaces))
	return nil
}

// patchRateLimits sends u to firecracker, adding to done what it applied.
func (m *Machine) patchRateLimits(ctx context.Context, u RateLimitUpdate, done *RateLimitUpdate) error {
	for _, id := range sortedKeys(u.Drives) {
		rl := u.Drives[id]
		if err := m.client.PatchDrive(ctx, fcapi.DriveUpdate{DriveID: id, RateLimiter: &rl}); err != nil {
			return fmt.Errorf("update vm %s: drive %s: %w", m.name, id, m.notRunning(err))
		}
		if done.Drives == nil {
			done.Drives = map[string]fcapi.RateLimiter{}
		}
		done.Drives[id] = rl
	}
	for _, id := range sortedKeys(u.Interfaces) {
		l := u.Interfaces[id]
		if err := m.client.PatchNetworkInterface(ctx, fcapi.NetworkInterfaceUpdate{IfaceID: id, RxRateLimiter: l.Rx, TxRateLimiter: l.Tx}); err != nil {
			return fmt.Errorf("update vm %s: interface %s: %w", m.name, id, m.notRunning(err))
		}
		if done.Interfaces == nil {
			done.Interfaces = map[string]InterfaceRateLimits{}
		}
		done.Interfaces[id] = l
	}
	return nil
}

// recordRateLimits writes the limits u applied into the VM's spec: this Machine's, and the one
// state.json records (under the runtime root's lock, as every writer of a running VM's state
// takes it), which Attach, Info and Snapshot in other processes read.
func (m *Machine) recordRateLimits(ctx context.Context, u RateLimitUpdate) error {
	if len(u.Drives)+len(u.Interfaces) == 0 {
		return nil
	}
	if err := m.update(ctx, func(r *vmRecord) { r.spec = u.applyTo(r.spec) }); err != nil {
		return fmt.Errorf("update vm %s: the new limits apply, but recording them failed (inspect and snapshots show the old ones): %w", m.name, err)
	}
	return nil
}

// applyTo returns spec with u's limiters merged into its drives and interfaces (those of a
// managed network too), as Firecracker merges a PATCH: spec's slices are copied, never
// changed in place, since copies of the spec share them.
func (u RateLimitUpdate) applyTo(spec MachineSpec) MachineSpec {
	spec.Drives = slices.Clone(spec.Drives)
	for i := range spec.Drives {
		if rl, ok := u.Drives[spec.Drives[i].ID]; ok {
			spec.Drives[i].RateLimiter = mergeLimiter(spec.Drives[i].RateLimiter, &rl)
		}
	}
	spec.Interfaces = slices.Clone(spec.Interfaces)
	for i := range spec.Interfaces {
		if l, ok := u.Interfaces[spec.Interfaces[i].ID]; ok {
			n := &spec.Interfaces[i]
			n.RxRateLimiter, n.TxRateLimiter = mergeLimiter(n.RxRateLimiter, l.Rx), mergeLimiter(n.TxRateLimiter, l.Tx)
		}
	}
	if spec.Network != nil {
		nw := *spec.Network
		nw.NICs = slices.Clone(nw.NICs)
		for i := range nw.NICs {
			if l, ok := u.Interfaces[nw.NICs[i].ID]; ok {
				n := &nw.NICs[i]
				n.RxRateLimiter, n.TxRateLimiter = mergeLimiter(n.RxRateLimiter, l.Rx), mergeLimiter(n.TxRateLimiter, l.Tx)
			}
		}
		spec.Network = &nw
	}
	return spec
}

// mergeLimiter is cur after the update upd (nil: no change): a bucket upd leaves nil stays,
// one with Size or RefillTime 0 is removed, and any other replaces cur's. A limiter left with
// no bucket is nil, no limit.
func mergeLimiter(cur, upd *fcapi.RateLimiter) *fcapi.RateLimiter {
	if upd == nil {
		return cur
	}
	var out fcapi.RateLimiter
	if cur != nil {
		out = *cur
	}
	bucket := func(cur, upd *fcapi.TokenBucket) *fcapi.TokenBucket {
		switch {
		case upd == nil:
			return cur
		case upd.Size == 0 || upd.RefillTime == 0:
			return nil
		}
		b := *upd
		return &b
	}
	out.Bandwidth, out.Ops = bucket(out.Bandwidth, upd.Bandwidth), bucket(out.Ops, upd.Ops)
	if out.Bandwidth == nil && out.Ops == nil {
		return nil
	}
	return &out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// applyNICRateLimits gives the managed network's interfaces in cfg the rate limiters their
// NICSpec names.
func applyNICRateLimits(spec MachineSpec, cfg *fcapi.VMConfig) {
	if spec.Network == nil {
		return
	}
	for _, nic := range spec.Network.NICs {
		for i := range cfg.NetworkInterfaces {
			if n := &cfg.NetworkInterfaces[i]; n.IfaceID == nic.ID {
				n.RxRateLimiter, n.TxRateLimiter = nic.RxRateLimiter, nic.TxRateLimiter
			}
		}
	}
}
