package netdev

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CreateTAP creates a persistent TAP device called name in the calling thread's network
// namespace, with the options' MTU, owner and address, marked as smartvm's (its alias), and
// brings it up: a TAP left down makes Firecracker fail every write to it.
//
// It never takes over an existing device: when any device called name exists, it fails with
// an error wrapping ErrExists (EBUSY from the kernel). Other errors: ErrNoTUN when
// /dev/net/tun is missing, ErrPermission without CAP_NET_ADMIN. On error nothing is left.
func CreateTAP(name string, opts TAPOptions) (*TAP, error) {
	ns, err := callerNetns()
	if err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	h, err := nsHandle(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	defer h.Close()
	idx, err := createTAP(ns, h, name, opts, "/dev/net/tun")
	if err != nil {
		ns.Close()
		return nil, err
	}
	return &TAP{Name: name, Index: idx, alias: tapAlias(opts.Tag), ns: ns}, nil
}

// Close deletes the device. It is safe to call more than once, and on a nil TAP. A device that
// is already gone is not an error.
func (t *TAP) Close() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ns == nil {
		return nil
	}
	h, err := nsHandle(t.ns)
	if err != nil {
		return fmt.Errorf("delete tap %s: %w", t.Name, err)
	}
	defer h.Close()
	if err := deleteLink(h, t.Name, "tuntap", func(a string) bool { return a == t.alias }); err != nil {
		return err
	}
	t.ns.Close()
	t.ns = nil
	return nil
}

// DeleteTAP deletes the TAP device called name in the calling thread's network namespace, for
// reaping leftovers. A missing device is not an error. It refuses (ErrNotOwned) to delete a
// device that is not a TAP created by smartvm.
func DeleteTAP(name string) error {
	ns, err := callerNetns()
	if err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	defer ns.Close()
	h, err := nsHandle(ns)
	if err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	defer h.Close()
	return deleteLink(h, name, "tuntap", func(a string) bool {
		return a == aliasMark || strings.HasPrefix(a, aliasMark+" ")
	})
}

// nsHandle opens a netlink handle in the namespace ns.
func nsHandle(ns *os.File) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(int(ns.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns.Name(), permErr(err))
	}
	return h, nil
}

// createTAP creates the TAP in ns (whose netlink handle is h), opening the TUN device at
// tunPath. It returns the device's index. The device stays non-persistent, so that it vanishes
// with the file descriptor on any failure, until everything else is done.
func createTAP(ns *os.File, h *netlink.Handle, name string, o TAPOptions, tunPath string) (int, error) {
	if err := CheckIfName(name); err != nil {
		return 0, fmt.Errorf("create tap: %w", err)
	}
	if o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535) {
		return 0, fmt.Errorf("create tap %s: MTU %d: want 68 to 65535, or 0 for the default", name, o.MTU)
	}
	if o.UID < 0 || o.GID < 0 {
		return 0, fmt.Errorf("create tap %s: owner %d:%d: ids cannot be negative", name, o.UID, o.GID)
	}
	var fd int
	err := inNetns(ns, func() error {
		var err error
		fd, err = unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
		return err
	})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return 0, fmt.Errorf("create tap %s: %w (%s: %w): load the tun module (`modprobe tun`), or create the device node (`mknod /dev/net/tun c 10 200`)",
			name, ErrNoTUN, tunPath, err)
	}
	if err != nil {
		return 0, fmt.Errorf("create tap %s: open %s: %w", name, tunPath, permErr(err))
	}
	defer unix.Close(fd)

	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("create tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return 0, fmt.Errorf("create tap %s: %w (%w): a network device with this name exists, and smartvm does not touch devices it did not create; see what it is with `ip -d link show %s`, and delete it with `ip link del %s` if it is a leftover",
				name, ErrExists, err, name, name)
		}
		return 0, fmt.Errorf("create tap %s: TUNSETIFF: %w", name, permErr(err))
	}
	if o.UID != 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, o.UID); err != nil {
			return 0, fmt.Errorf("create tap %s: set owner %d: %w", name, o.UID, err)
		}
	}
	if o.GID != 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, o.GID); err != nil {
			return 0, fmt.Errorf("create tap %s: set group %d: %w", name, o.GID, err)
		}
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := configureLink(h, link, tapAlias(o.Tag), o.MTU, o.Addr); err != nil {
		return 0, fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return 0, fmt.Errorf("create tap %s: make persistent: %w", name, err)
	}
	return link.Attrs().Index, nil
}

// configureLink sets a device's alias, MTU (unless 0) and address (unless zero), and brings
// it up.
func configureLink(h *netlink.Handle, link netlink.Link, alias string, mtu int, addr netip.Prefix) error {
	if err := h.LinkSetAlias(link, alias); err != nil {
		return fmt.Errorf("set alias: %w", permErr(err))
	}
	if mtu != 0 {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, permErr(err))
		}
	}
	if addr.IsValid() {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
			return fmt.Errorf("add address %s: %w", addr, permErr(err))
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", permErr(err))
	}
	return nil
}

// ipNet converts an address with its prefix length (not masked) to the netlink form.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// deleteLink deletes the device called name if it is of the given kind and owned reports true
// for its alias. A missing device is not an error; any other device is left alone and reported
// with ErrNotOwned.
func deleteLink(h *netlink.Handle, name, kind string, owned func(alias string) bool) error {
	link, err := h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if link.Type() != kind || !owned(link.Attrs().Alias) {
		return fmt.Errorf("delete %s: %w: it is a %s device with alias %q; leaving it alone", name, ErrNotOwned, link.Type(), link.Attrs().Alias)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, permErr(err))
	}
	return nil
}
