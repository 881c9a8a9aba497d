package netdev

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cleanupTimeout bounds the lock waits of a rollback, which runs even when Setup's ctx has
// ended.
const cleanupTimeout = 30 * time.Second

// Setup builds the network of one VM, as cfg describes, relative to the calling thread's
// network namespace (the host's, unless the caller locked its goroutine to a thread in another
// one): a /30 per NIC leased from the pool under cfg.Dir, a TAP per NIC (up, with the host
// address and the MTU), optionally the VM's own namespace joined to the host by a veth pair,
// and optionally NAT through the uplink. A record of it is written under cfg.Dir before
// anything is created, so that Reclaim finds whatever a crash leaves behind.
//
// If any step fails, what was built is removed again (in reverse order) and the error says
// which step failed. ctx limits the waits for the pool lock and is checked between steps; the
// rollback runs even after ctx ends.
//
// Errors: ErrPermission without CAP_NET_ADMIN (and CAP_SYS_ADMIN for cfg.Netns), ErrNoTUN,
// ErrPoolExhausted, ErrUplinkNotFound, ErrExists when a device or namespace with one of the
// names exists or a network is already set up for cfg.Owner.
func Setup(ctx context.Context, cfg Config, opts ...Option) (*Network, error) {
	o := newOptions(opts)
	cfg, err := cfg.check()
	if err != nil {
		return nil, err
	}
	wrap := func(err error) error { return fmt.Errorf("set up network of %s: %w", cfg.Owner, err) }
	pool, err := NewPool(cfg.Dir, cfg.Pool)
	if err != nil {
		return nil, wrap(err)
	}
	if err := checkCaps(cfg.Netns); err != nil {
		return nil, wrap(err)
	}
	if _, err := os.Stat(o.tunPath); errors.Is(err, fs.ErrNotExist) {
		return nil, wrap(fmt.Errorf("%w (%s is missing): load the tun module (`modprobe tun`), or create the device node (`mknod /dev/net/tun c 10 200`)", ErrNoTUN, o.tunPath))
	}
	host, err := callerNetns()
	if err != nil {
		return nil, wrap(err)
	}
	defer host.Close()
	hh, err := nsHandle(host)
	if err != nil {
		return nil, wrap(err)
	}
	defer hh.Close()

	b := &builder{cfg: cfg, o: o, log: o.logger.With("vm", cfg.Owner), pool: pool, host: host, hh: hh}
	defer b.close()
	if err := b.build(ctx); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if rerr := b.rollback(cctx); rerr != nil {
			return nil, wrap(fmt.Errorf("%w; rolling back also failed (the record stays for Reclaim): %w", err, rerr))
		}
		return nil, wrap(err)
	}
	b.log.Info("network set up", "nics", len(b.n.NICs), "guest", b.n.GuestAddr(), "netns", b.cfg.Netns, "nat", b.n.NAT != nil)
	return b.n, nil
}

// builder holds Setup's state: what is open, and the undo stack of what was created.
type builder struct {
	cfg  Config
	o    *options
	log  *slog.Logger
	pool *Pool
	host *os.File
	hh   *netlink.Handle
	n    *Network

	recorded bool     // leases and record written
	undo     []undo   // what to remove, in creation order
	vmns     *os.File // the VM's namespace, when cfg.Netns
	vh       *netlink.Handle
}

type undo struct {
	what string
	fn   func(ctx context.Context) error
}

func (b *builder) push(what string, fn func(ctx context.Context) error) {
	b.undo = append(b.undo, undo{what, fn})
}

// step ends a creation step: it checks ctx and the failure hook.
func (b *builder) step(ctx context.Context, name string) error {
	if err := b.o.step(name); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return ctx.Err()
}

func (b *builder) close() {
	if b.vh != nil {
		b.vh.Close()
	}
	if b.vmns != nil {
		b.vmns.Close()
	}
}

func (b *builder) build(ctx context.Context) error {
	uplink := ""
	if b.cfg.NAT {
		var err error
		if uplink, err = findUplink(b.hh, b.cfg.Uplink); err != nil {
			return err
		}
	}
	avoid, err := hostAddrs(b.hh)
	if err != nil {
		return err
	}
	if err := b.record(ctx, uplink, avoid); err != nil {
		return err
	}
	if err := b.step(ctx, "record"); err != nil {
		return err
	}
	ns, h := b.host, b.hh
	if b.cfg.Netns {
		if err := b.namespace(ctx); err != nil {
			return err
		}
		ns, h = b.vmns, b.vh
	}
	for _, nic := range b.n.NICs {
		opts := TAPOptions{MTU: nic.MTU, UID: b.cfg.UID, GID: b.cfg.GID, Addr: netip.PrefixFrom(nic.HostIP, subnetBits), Tag: b.n.Owner}
		if _, err := createTAP(ns, h, nic.TAP, opts, b.o.tunPath); err != nil {
			return err
		}
		b.log.Debug("created tap", "tap", nic.TAP, "host", nic.HostIP, "guest", nic.GuestIP)
		b.push("tap "+nic.TAP, func(context.Context) error { return deleteOwned(h, nic.TAP, "tuntap", b.n.Owner) })
		if err := b.step(ctx, "tap"); err != nil {
			return err
		}
	}
	if b.cfg.Netns {
		// Removed with the namespace.
		if err := addNetnsNAT(b.vmns, b.n); err != nil {
			return err
		}
		if err := b.step(ctx, "netns-nat"); err != nil {
			return err
		}
	}
	if b.n.NAT != nil {
		if err := enableForwarding(b.host); err != nil {
			return err
		}
		if err := b.pool.locked(ctx, func() error { return addHostNAT(b.host, b.n) }); err != nil {
			return err
		}
		b.log.Debug("added NAT", "uplink", b.n.NAT.Uplink, "sources", b.n.NAT.Sources)
		b.push("NAT rules", func(ctx context.Context) error {
			return b.pool.locked(ctx, func() error { return removeHostNAT(b.host, b.n) })
		})
		if err := b.step(ctx, "nat"); err != nil {
			return err
		}
	}
	return nil
}

// record leases the subnets and writes the record, under the pool lock.
func (b *builder) record(ctx context.Context, uplink string, avoid []netip.Addr) error {
	return b.pool.locked(ctx, func() error {
		if _, err := os.Stat(recordPath(b.cfg.Dir, b.cfg.Owner)); err == nil {
			return fmt.Errorf("%w: a network is already set up for %s (%s); tear it down, or reclaim it if the VM has ended",
				ErrExists, b.cfg.Owner, recordPath(b.cfg.Dir, b.cfg.Owner))
		}
		inUse := func(p netip.Prefix) bool {
			for _, a := range avoid {
				if p.Contains(a) {
					return true
				}
			}
			return false
		}
		leased, err := b.pool.allocateLocked(b.cfg.Owner, b.cfg.leasesNeeded(), inUse)
		if err != nil {
			return err
		}
		b.n = b.cfg.plan(leased, uplink)
		if err := writeRecord(b.n); err != nil {
			return errors.Join(err, b.pool.releaseLocked(b.cfg.Owner))
		}
		b.recorded = true
		return nil
	})
}

// namespace creates the VM's namespace and the veth pair that joins it to the host.
func (b *builder) namespace(ctx context.Context) error {
	ns := b.n.Netns
	if err := createNetns(ns.Path); err != nil {
		return err
	}
	b.log.Debug("created network namespace", "path", ns.Path)
	b.push("namespace "+ns.Path, func(context.Context) error { return deleteNetns(ns.Path) })
	if err := b.step(ctx, "netns"); err != nil {
		return err
	}
	var err error
	if b.vmns, err = os.Open(ns.Path); err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	if b.vh, err = nsHandle(b.vmns); err != nil {
		return err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ns.HostVeth, MTU: b.cfg.MTU},
		PeerName:      ns.PeerVeth,
		PeerNamespace: netlink.NsFd(int(b.vmns.Fd())),
	}
	if err := b.hh.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create veth %s: %w: a network device with this name exists; see what it is with `ip -d link show %s`", ns.HostVeth, ErrExists, ns.HostVeth)
		}
		return fmt.Errorf("create veth %s: %w", ns.HostVeth, permErr(err))
	}
	// Deleting one end deletes the pair. This run created it, so it is deleted even before it
	// has its alias.
	b.push("veth "+ns.HostVeth, func(context.Context) error {
		return deleteLink(b.hh, ns.HostVeth, "veth", func(a string) bool { return a == "" || a == deviceAlias(b.n.Owner) })
	})
	alias := deviceAlias(b.n.Owner)
	if err := configureLink(b.hh, veth, alias, 0, netip.PrefixFrom(ns.HostIP, subnetBits)); err != nil {
		return fmt.Errorf("veth %s: %w", ns.HostVeth, err)
	}
	peer, err := b.vh.LinkByName(ns.PeerVeth)
	if err != nil {
		return fmt.Errorf("veth %s in %s: %w", ns.PeerVeth, ns.Name, err)
	}
	if err := configureLink(b.vh, peer, alias, 0, netip.PrefixFrom(ns.PeerIP, subnetBits)); err != nil {
		return fmt.Errorf("veth %s in %s: %w", ns.PeerVeth, ns.Name, err)
	}
	if lo, err := b.vh.LinkByName("lo"); err == nil {
		if err := b.vh.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in %s: %w", ns.Name, err)
		}
	}
	if err := b.vh.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: ns.HostIP.AsSlice()}); err != nil {
		return fmt.Errorf("default route in %s via %s: %w", ns.Name, ns.HostIP, err)
	}
	if err := enableForwarding(b.vmns); err != nil {
		return fmt.Errorf("namespace %s: %w", ns.Name, err)
	}
	b.log.Debug("created veth", "host", ns.HostVeth, "host_ip", ns.HostIP, "peer_ip", ns.PeerIP)
	return b.step(ctx, "veth")
}

// rollback undoes what build created, newest first, then releases the leases and removes the
// record if everything else is gone.
func (b *builder) rollback(ctx context.Context) error {
	var errs []error
	for i := len(b.undo) - 1; i >= 0; i-- {
		u := b.undo[i]
		if err := u.fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", u.what, err))
		}
	}
	if len(errs) == 0 && b.recorded {
		errs = append(errs, b.pool.locked(ctx, func() error {
			return errors.Join(b.pool.releaseLocked(b.n.Owner), removeRecord(b.n.Dir, b.n.Owner))
		}))
	}
	b.log.Debug("rolled back", "steps", len(b.undo))
	return errors.Join(errs...)
}

// hostAddrs lists the IPv4 addresses of the namespace of h, so that no /30 that holds one is
// leased.
func hostAddrs(h *netlink.Handle) ([]netip.Addr, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// deleteOwned deletes owner's device of the given kind. A device with the name that is not
// owner's (a foreign one that made Setup fail, say) is left alone without error.
func deleteOwned(h *netlink.Handle, name, kind, owner string) error {
	err := deleteLink(h, name, kind, func(a string) bool { return a == deviceAlias(owner) })
	if errors.Is(err, ErrNotOwned) {
		return nil
	}
	return err
}

// Teardown removes everything Setup built for n: NAT rules (and the table with the last of
// them), TAP devices, the veth pair and the namespace, then releases the leases and removes the
// record. It runs relative to the calling thread's network namespace, which must be the one
// Setup ran in. What is already gone is skipped, so it is safe to call again after a partial
// failure; devices that are not the VM's are never touched, and a namespace at the recorded
// path that holds other devices is left alone with an error wrapping ErrNotOwned. The leases
// and the record are kept until everything else is gone. Run it after the VM's Firecracker
// has exited. Errors: ErrNotOwned, ErrPermission, and ctx's error while waiting for the lock.
func (n *Network) Teardown(ctx context.Context, opts ...Option) error {
	if n == nil {
		return nil
	}
	o := newOptions(opts)
	if err := validOwner(n.Owner); err != nil {
		return fmt.Errorf("tear down network: %w", err)
	}
	host, err := callerNetns()
	if err != nil {
		return fmt.Errorf("tear down network of %s: %w", n.Owner, err)
	}
	defer host.Close()
	hh, err := nsHandle(host)
	if err != nil {
		return fmt.Errorf("tear down network of %s: %w", n.Owner, err)
	}
	defer hh.Close()
	return teardown(ctx, o, host, hh, n)
}

func teardown(ctx context.Context, o *options, host *os.File, hh *netlink.Handle, n *Network) error {
	log := o.logger.With("vm", n.Owner)
	pool, err := NewPool(n.Dir, netip.Prefix{})
	if err != nil {
		return fmt.Errorf("tear down network of %s: %w", n.Owner, err)
	}
	var errs []error
	if n.NAT != nil {
		log.Debug("removing NAT rules", "sources", n.NAT.Sources)
		errs = append(errs, pool.locked(ctx, func() error { return removeHostNAT(host, n) }))
	}
	if n.Netns != nil {
		log.Debug("removing namespace", "path", n.Netns.Path)
		errs = append(errs, teardownNetns(hh, n))
	} else {
		for _, nic := range n.NICs {
			log.Debug("removing tap", "tap", nic.TAP)
			errs = append(errs, deleteOwned(hh, nic.TAP, "tuntap", n.Owner))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down network of %s: %w", n.Owner, err)
	}
	err = pool.locked(ctx, func() error {
		return errors.Join(pool.releaseLocked(n.Owner), removeRecord(n.Dir, n.Owner))
	})
	if err != nil {
		return fmt.Errorf("tear down network of %s: %w", n.Owner, err)
	}
	log.Info("network torn down")
	return nil
}

// teardownNetns removes the TAPs in the VM's namespace, the veth pair and the namespace. A
// namespace at the path that holds none of the VM's devices (and is not empty) is not the
// VM's, and is left alone.
func teardownNetns(hh *netlink.Handle, n *Network) error {
	ns := n.Netns
	var errs []error
	f, err := os.Open(ns.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Gone, and the devices inside with it.
	case err != nil:
		return fmt.Errorf("open network namespace %s: %w", ns.Path, err)
	default:
		defer f.Close()
		if checkNetns(f) != nil {
			// A placeholder left by a crash before the mount.
			break
		}
		vh, err := nsHandle(f)
		if err != nil {
			return err
		}
		defer vh.Close()
		owned, err := ownedNetns(vh, n.Owner)
		if err != nil {
			return err
		}
		if !owned {
			return fmt.Errorf("network namespace %s: %w: it holds other devices than the VM's; leaving it alone", ns.Path, ErrNotOwned)
		}
		for _, nic := range n.NICs {
			errs = append(errs, deleteOwned(vh, nic.TAP, "tuntap", n.Owner))
		}
	}
	errs = append(errs, deleteOwned(hh, ns.HostVeth, "veth", n.Owner))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return deleteNetns(ns.Path)
}

// ownedNetns reports whether the namespace of vh is owner's: it holds a device tagged with
// owner's alias, or nothing but the loopback device.
func ownedNetns(vh *netlink.Handle, owner string) (bool, error) {
	links, err := vh.LinkList()
	if err != nil {
		return false, fmt.Errorf("list devices in namespace: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Alias == deviceAlias(owner) {
			return true, nil
		}
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			return false, nil
		}
	}
	return true, nil
}

// Reclaim tears down the networks recorded in dir (the state directory given to Setup) whose
// owners are dead, as alive reports, and releases leases that dead owners hold without a
// record. alive must report true for VMs that are running or being set up. It runs relative to
// the calling thread's network namespace, like Setup. Safe to run more than once, and
// concurrently with Setup and Teardown of live VMs.
func Reclaim(ctx context.Context, dir string, alive func(owner string) bool, opts ...Option) error {
	o := newOptions(opts)
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("reclaim networks in %s: %w", dir, err)
	}
	pool, err := NewPool(abs, netip.Prefix{})
	if err != nil {
		return fmt.Errorf("reclaim networks: %w", err)
	}
	records, rerr := readRecords(abs)
	errs := []error{rerr}
	var dead []*Network
	for _, n := range records {
		if !alive(n.Owner) {
			dead = append(dead, n)
		}
	}
	if len(dead) > 0 {
		host, err := callerNetns()
		if err != nil {
			return fmt.Errorf("reclaim networks: %w", err)
		}
		defer host.Close()
		hh, err := nsHandle(host)
		if err != nil {
			return fmt.Errorf("reclaim networks: %w", err)
		}
		defer hh.Close()
		for _, n := range dead {
			o.logger.Info("reclaiming network of ended VM", "vm", n.Owner)
			errs = append(errs, teardown(ctx, o, host, hh, n))
		}
	}
	if _, err := os.Stat(pool.leaseDir()); errors.Is(err, fs.ErrNotExist) {
		return errors.Join(errs...)
	}
	errs = append(errs, pool.locked(ctx, func() error {
		ls, err := pool.leasesLocked()
		if err != nil {
			return err
		}
		done := map[string]bool{}
		var errs []error
		for _, l := range ls {
			if l.Owner == "" || done[l.Owner] {
				continue
			}
			done[l.Owner] = true
			if _, err := os.Stat(recordPath(abs, l.Owner)); err == nil || alive(l.Owner) {
				continue
			}
			o.logger.Info("releasing leases of ended VM", "vm", l.Owner)
			errs = append(errs, pool.releaseLocked(l.Owner))
		}
		return errors.Join(errs...)
	}))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reclaim networks in %s: %w", abs, err)
	}
	return nil
}
