package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/mergepatch"
	"github.com/smartvm/smartvm/netdev"
)

// netDir is netdev's state directory in the runtime root: leases, their lock and one record
// per VM network.
func (mgr *Manager) netDir() string { return filepath.Join(mgr.root.Path(), "net") }

// networkConfig is the spec's network in netdev's terms. For a restore, the NICs keep the
// TAP names the snapshot holds and, in a namespace of the VM's own, the guest addresses.
func (s *starter) networkConfig() netdev.Config {
	ns := s.spec.Network
	pool, _ := netip.ParsePrefix(ns.Pool) // Validate checked it
	cfg := netdev.Config{
		Owner:       s.spec.Name,
		Dir:         s.mgr.netDir(),
		Pool:        pool,
		MTU:         ns.MTU,
		NAT:         ns.NAT,
		Uplink:      ns.Uplink,
		Netns:       ns.Namespace,
		NetnsDir:    s.mgr.netnsDir,
		KernelIPArg: ns.KernelIPArg,
	}
	for _, nic := range ns.NICs {
		nc := netdev.NICConfig{ID: nic.ID}
		if old := s.snapshotNIC(nic.ID); old != nil {
			if !s.overrideNICs() {
				nc.TAP = old.TAP
			}
			if ns.Namespace {
				nc.GuestIP = old.GuestIP
			}
		}
		cfg.NICs = append(cfg.NICs, nc)
	}
	return cfg
}

// snapshotNIC returns the NIC id of the VM the snapshot being restored was taken of, or nil.
func (s *starter) snapshotNIC(id string) *netdev.NIC {
	snap := s.snapshot()
	if snap == nil || snap.Network == nil {
		return nil
	}
	for i, nic := range snap.Network.NICs {
		if nic.ID == id {
			return &snap.Network.NICs[i]
		}
	}
	return nil
}

// setupNetwork builds the VM's network in the namespace of the calling thread and pushes its
// teardown, which runs in that namespace too (from whichever goroutine cleans up).
func (s *starter) setupNetwork(ctx context.Context) error {
	caller, err := callerNetns()
	if err != nil {
		return err
	}
	s.push(func(context.Context) error { return caller.Close() })
	s.callerNS = caller
	log := s.log
	n, err := netdev.Setup(ctx, s.networkConfig(), netdev.WithLogger(log))
	if err != nil {
		return err
	}
	s.net = n
	s.push(func(ctx context.Context) error {
		return netdev.InNetns(nsPath(caller), func() error { return n.Teardown(ctx, netdev.WithLogger(log)) })
	})
	if s.snapshot() != nil && !s.spec.Network.Namespace {
		for _, nic := range n.NICs {
			if old := s.snapshotNIC(nic.ID); old != nil && old.GuestIP != nic.GuestIP {
				return fmt.Errorf("nic %s: the snapshot's guest has address %s, and %s is free now (the snapshot's /30 is leased to another vm): restore with network.namespace, which keeps the guest's address",
					nic.ID, old.GuestIP, nic.GuestIP)
			}
		}
	}
	s.log.Debug("network set up", "guest", n.GuestAddr(), "nics", len(n.NICs), "namespace", n.Netns != nil, "nat", n.NAT != nil)
	return nil
}

// spawnAround is proc.Config.Around for the VM: without a network, nil; with one, it forks
// Firecracker in the namespace its TAPs are in: the VM's own, or the caller's.
func (s *starter) spawnAround() func(start func() error) error {
	if s.net == nil {
		return nil
	}
	path := nsPath(s.callerNS)
	if s.net.Netns != nil {
		path = s.net.Netns.Path
	}
	return func(start func() error) error { return netdev.InNetns(path, start) }
}

// nsPath names an open namespace file so that any thread of this process can open it.
func nsPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// networkInterfaces are the managed NICs as Firecracker gets them.
func networkInterfaces(n *netdev.Network) []fcapi.NetworkInterface {
	out := make([]fcapi.NetworkInterface, 0, len(n.NICs))
	for _, nic := range n.NICs {
		out = append(out, fcapi.NetworkInterface{IfaceID: nic.ID, HostDevName: nic.TAP, GuestMAC: nic.MAC})
	}
	return out
}

// teardownRecorded removes the network a dead VM's state.json records, relative to the
// calling thread's network namespace.
func (mgr *Manager) teardownRecorded(ctx context.Context, name string, raw json.RawMessage) error {
	var n netdev.Network
	if err := json.Unmarshal(raw, &n); err != nil {
		return fmt.Errorf("network of vm %s in state.json: %w", name, err)
	}
	// The record is data: it may only name this VM, this root's address pool and a namespace
	// in the namespace directory, never paths of its own choosing to unmount or delete.
	nsDir := mgr.netnsDir
	if nsDir == "" {
		nsDir = netdev.DefaultNetnsDir
	}
	if n.Owner != name || n.Dir != mgr.netDir() || (n.Netns != nil && (filepath.Dir(n.Netns.Path) != nsDir || filepath.Base(n.Netns.Path) != n.Netns.Name)) {
		return fmt.Errorf("network of vm %s in state.json names another owner (%q) or paths outside %s and %s; left alone: remove it by hand", name, n.Owner, mgr.netDir(), nsDir)
	}
	return n.Teardown(ctx, netdev.WithLogger(mgr.log))
}

// reclaimNetworks tears down the networks whose VM has no directory any more (its owner died
// before state.json recorded the network) and releases their leases. It holds root.lock, so
// no VM of the same name can start setting up meanwhile.
func (mgr *Manager) reclaimNetworks(ctx context.Context) error {
	dir := mgr.netDir()
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil // no VM here ever had a network
	}
	return mgr.root.Locked(ctx, func() error {
		// The record of an exited VM holds no network: its own is reclaimed too.
		return netdev.Reclaim(ctx, dir, mgr.root.Active, netdev.WithLogger(mgr.log))
	})
}

// mmdsData is the MMDS store the VM starts with: the spec's data and, for the agent, the
// guest's network (MMDSNetworkKey) under it.
func (s *starter) mmdsData() (json.RawMessage, error) {
	data := s.spec.MMDS.Data
	if !s.spec.agentNeedsMMDS() || s.net == nil || len(s.net.NICs) == 0 {
		return data, nil
	}
	nic := s.net.NICs[0]
	n := agentwire.MMDSNetwork{
		Address: netip.PrefixFrom(nic.GuestIP, nic.Subnet.Bits()).String(),
		Gateway: nic.HostIP.String(),
		// Guest NICs are numbered in the order Firecracker gets them: the spec's own first.
		Device:   "eth" + strconv.Itoa(len(s.spec.Interfaces)),
		Hostname: guestHostname(s.spec.Name),
	}
	var out any = map[string]any{agentwire.MMDSKey: map[string]any{"network": n}}
	if len(data) > 0 {
		var user any
		if err := json.Unmarshal(data, &user); err != nil {
			return nil, fmt.Errorf("mmds data: %w", err)
		}
		if _, ok := user.(map[string]any); !ok {
			return nil, errors.New("mmds data: the agent's network goes into MMDS under \"smartvm\", which needs the data to be a JSON object; make it one, or use network.kernel_ip_arg")
		}
		// The struct becomes a map first, so that the user's fields merge into it.
		b, _ := json.Marshal(out)
		_ = json.Unmarshal(b, &out)
		out = mergepatch.Apply(out, user)
	}
	return json.Marshal(out)
}

// mmdsBootArg is the kernel argument that tells the agent where MMDS is, when it learns its
// network there.
func (s MachineSpec) mmdsBootArg() string {
	if !s.agentNeedsMMDS() || s.MMDS == nil {
		return ""
	}
	addr := s.MMDS.IPv4Address
	if addr == "" {
		addr = agentwire.MMDSDefaultAddr
	}
	return agentwire.MMDSKernelArg + "=" + addr
}
