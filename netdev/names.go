package netdev

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Prefix starts the name of every network device and namespace netdev creates, so leftovers
// are recognisable (`ip link show | grep smv`).
const Prefix = "smv"

// aliasMark is the interface alias (IFLA_IFALIAS, `ip link` shows it as "alias") that netdev
// sets on every device it creates. Devices without it are never deleted.
const aliasMark = "smartvm"

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ less the NUL).
const maxIfName = 15

// maxHash is how many hex digits of the VM name's hash go into device names.
const maxHash = 10

// TAPName returns the name of the TAP device for NIC index of the VM named vm: "smv", then
// hex digits of a hash of vm, then "t" and the index, at most 15 bytes (IFNAMSIZ). The same
// inputs always give the same name; different VMs get different names (up to the hash's 40
// bits; a collision makes CreateTAP fail with ErrExists rather than share a device). Indexes
// are expected to be small (below 1000).
func TAPName(vm string, index int) string {
	return ifName(vm, "t"+strconv.Itoa(index))
}

// vethName returns the host end of the veth pair of the VM named vm ("smv…v").
func vethName(vm string) string {
	return ifName(vm, "v")
}

// netnsName returns the name of the VM's network namespace, "smv-<vm>", the name used with
// `ip netns exec`.
func netnsName(vm string) string {
	return Prefix + "-" + vm
}

func ifName(vm, suffix string) string {
	sum := sha256.Sum256([]byte(vm))
	n := min(maxIfName-len(Prefix)-len(suffix), maxHash)
	name := Prefix + hex.EncodeToString(sum[:])[:max(n, 1)] + suffix
	return name[:min(len(name), maxIfName)]
}

// CheckIfName reports whether Linux accepts name as a network interface name: 1 to 15 bytes,
// no '/', ':', spaces or control characters, and not "." or "..".
func CheckIfName(name string) error {
	if name == "" || len(name) > maxIfName || name == "." || name == ".." {
		return fmt.Errorf("interface name %q: want 1 to %d bytes", name, maxIfName)
	}
	for _, c := range []byte(name) {
		if c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return fmt.Errorf("interface name %q: contains %q; use letters, digits, '-', '_' or '.'", name, c)
		}
	}
	return nil
}

var ownerRE = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// validOwner checks an owner (VM) name: it names files, namespaces and rule comments.
func validOwner(owner string) error {
	if !ownerRE().MatchString(owner) {
		return fmt.Errorf("owner %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", owner)
	}
	return nil
}

// GuestMAC returns the MAC address for a guest NIC with IPv4 address ip: 06:00 followed by
// the four bytes of ip. The Firecracker CI images' fcnet service derives the guest's address
// from it (06:00:AC:10:00:02 becomes 172.16.0.2/30), so such guests need no kernel argument.
// It returns nil when ip is not an IPv4 address.
func GuestMAC(ip netip.Addr) net.HardwareAddr {
	ip = ip.Unmap()
	if !ip.Is4() {
		return nil
	}
	b := ip.As4()
	return net.HardwareAddr{0x06, 0x00, b[0], b[1], b[2], b[3]}
}

// KernelIPArg returns the kernel command-line argument that configures a guest's network
// interface statically at boot, for guests without fcnet:
// "ip=<guest>::<gateway>:<netmask>::<device>:off". guest is the guest's address with its
// prefix length (172.16.0.2/30), gateway the host end (172.16.0.1), device the guest's
// interface ("eth0" for the first NIC). The kernel applies only one ip= argument.
func KernelIPArg(guest netip.Prefix, gateway netip.Addr, device string) string {
	mask := net.CIDRMask(guest.Bits(), guest.Addr().BitLen())
	return fmt.Sprintf("ip=%s::%s:%s::%s:off", guest.Addr(), gateway, net.IP(mask), device)
}

// subnetHosts returns the two usable addresses of a /30: the host end and the guest.
func subnetHosts(s netip.Prefix) (host, guest netip.Addr) {
	host = s.Masked().Addr().Next()
	return host, host.Next()
}
