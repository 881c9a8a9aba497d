package smartvm

import (
	"context"
	"fmt"
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
// It returns an error wrapping ErrNotRunning when the VM has ended, and Firecracker's
// *fcapi.APIError for an ID the VM does not have or a limiter it refuses.
func (m *Machine) UpdateRateLimits(ctx context.Context, u RateLimitUpdate) error {
	if m.exited() {
		return fmt.Errorf("update vm %s: %w", m.name, ErrNotRunning)
	}
	for _, id := range sortedKeys(u.Drives) {
		rl := u.Drives[id]
		if err := m.client.PatchDrive(ctx, fcapi.DriveUpdate{DriveID: id, RateLimiter: &rl}); err != nil {
			return fmt.Errorf("update vm %s: drive %s: %w", m.name, id, m.notRunning(err))
		}
	}
	for _, id := range sortedKeys(u.Interfaces) {
		l := u.Interfaces[id]
		if err := m.client.PatchNetworkInterface(ctx, fcapi.NetworkInterfaceUpdate{IfaceID: id, RxRateLimiter: l.Rx, TxRateLimiter: l.Tx}); err != nil {
			return fmt.Errorf("update vm %s: interface %s: %w", m.name, id, m.notRunning(err))
		}
	}
	m.log.Info("rate limits updated", "drives", len(u.Drives), "interfaces", len(u.Interfaces))
	return nil
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
