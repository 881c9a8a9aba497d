package netdev

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultNetnsDir is where per-VM network namespaces are bind-mounted, the directory
// `ip netns` uses, so `ip netns exec smv-<vm> …` works.
const DefaultNetnsDir = "/var/run/netns"

// peerVeth is the name of the namespace end of the veth pair, inside the VM's namespace.
const peerVeth = "veth0"

// Config describes the network of one VM, for Setup. It is pure data.
type Config struct {
	// Owner is the VM's name: leases and the record are keyed by it, devices are named after
	// it (TAPName(Owner, i)) and tagged with it. Required: 1 to 64 letters, digits, '.', '_'
	// or '-', starting with a letter or digit.
	Owner string

	// Dir is the state directory: leases, their lock and one record per VM (the runtime
	// root's net/). Required.
	Dir string

	// Pool is the range the /30s come from. Zero means DefaultPool.
	Pool netip.Prefix

	// NICs lists the VM's network interfaces. Nil means one NIC with defaults.
	NICs []NICConfig

	// MTU of the TAP devices (and the veth pair). Zero keeps the kernel's default, 1500.
	MTU int

	// UID and GID own the TAP devices: a process with that uid (and in that group) may open
	// them without CAP_NET_ADMIN, as a non-root Firecracker must. Zero leaves them unset
	// (only processes with CAP_NET_ADMIN may open the TAP).
	UID, GID int

	// NAT masquerades the VM's traffic out of Uplink and turns IP forwarding on in the host
	// namespace. False means the guest reaches only the host.
	NAT bool

	// Uplink is the host device NAT sends traffic out of. Empty means the device of the IPv4
	// default route. Used only with NAT.
	Uplink string

	// Netns puts the TAP devices in a network namespace of the VM's own, named "smv-<Owner>"
	// and bind-mounted in NetnsDir, connected to the host by a veth pair. Firecracker must then
	// be started inside it (see InNetns). The host reaches the guest's first NIC at
	// Network.GuestAddr(). False puts the TAP devices in the host namespace.
	Netns bool

	// NetnsDir is where the namespace is bind-mounted. Empty means DefaultNetnsDir.
	NetnsDir string

	// KernelIPArg fills Network.BootArgs with the ip= argument that configures the first NIC
	// of guests without fcnet. False leaves BootArgs empty.
	KernelIPArg bool
}

// NICConfig describes one network interface of a VM.
type NICConfig struct {
	// ID is Firecracker's iface_id. Empty means "eth<index>".
	ID string

	// TAP is the host device's name. Empty means TAPName(Owner, index). A VM restored from
	// another VM's snapshot needs the name recorded in the snapshot; give it here (with Netns,
	// so it does not collide with the original's).
	TAP string

	// GuestIP is the guest's address. The zero Addr means a /30 leased from the pool. A clone
	// keeps its snapshot's guest address: set it, with Netns, and the /30 around it is used
	// inside the VM's namespace (never leased, never colliding with another clone).
	GuestIP netip.Addr
}

// Network is what Setup built for one VM: what Firecracker needs per NIC, and what Teardown
// needs to remove it all. It is plain data, meant to be stored as JSON (the VM's state.json).
type Network struct {
	Owner    string     `json:"owner"`
	Dir      string     `json:"dir"`
	NICs     []NIC      `json:"nics"`
	Netns    *Namespace `json:"netns,omitempty"`
	NAT      *NAT       `json:"nat,omitempty"`
	BootArgs string     `json:"boot_args,omitempty"` // ip=… when Config.KernelIPArg
}

// NIC is one network interface: Firecracker's iface_id, host_dev_name and guest_mac, and the
// /30 it lives in (host end HostIP on the TAP, guest GuestIP, which the MAC encodes).
type NIC struct {
	ID      string       `json:"id"`
	TAP     string       `json:"tap"`
	MAC     string       `json:"mac"`
	MTU     int          `json:"mtu,omitempty"`
	Subnet  netip.Prefix `json:"subnet"`
	HostIP  netip.Addr   `json:"host_ip"`
	GuestIP netip.Addr   `json:"guest_ip"`
}

// Namespace is a VM's own network namespace. Path is its bind mount: enter it with InNetns to
// start Firecracker, or run `ip netns exec Name …`. The veth pair's host end HostVeth has
// HostIP; its peer PeerVeth, inside, has PeerIP, to which the host sends traffic for the
// guest (the namespace forwards it to the first NIC's guest address).
type Namespace struct {
	Name     string       `json:"name"`
	Path     string       `json:"path"`
	HostVeth string       `json:"host_veth"`
	PeerVeth string       `json:"peer_veth"`
	Subnet   netip.Prefix `json:"subnet"`
	HostIP   netip.Addr   `json:"host_ip"`
	PeerIP   netip.Addr   `json:"peer_ip"`
}

// NAT is the masquerading set up for a VM: traffic from Sources leaving through Uplink.
type NAT struct {
	Uplink  string         `json:"uplink"`
	Sources []netip.Prefix `json:"sources"`
}

// GuestAddr returns the address at which the host reaches the guest's first NIC: the guest's
// own address, or with a namespace the namespace's veth address, which is forwarded to the
// guest. It is the zero Addr when the VM has no NIC.
func (n *Network) GuestAddr() netip.Addr {
	switch {
	case n.Netns != nil:
		return n.Netns.PeerIP
	case len(n.NICs) > 0:
		return n.NICs[0].GuestIP
	}
	return netip.Addr{}
}

// natTag is the comment on the NAT rule for source src of owner: it ties the rule to its VM,
// which keeps the table's rules a reference count of the VMs that use it.
func natTag(owner string, src netip.Prefix) string {
	return aliasMark + " " + owner + " " + src.String()
}

// deviceAlias is the alias of the devices created for owner.
func deviceAlias(owner string) string { return aliasMark + " " + owner }

// check validates c and fills in defaults. It touches nothing.
func (c Config) check() (Config, error) {
	if err := validOwner(c.Owner); err != nil {
		return c, fmt.Errorf("network config: %w", err)
	}
	if c.Dir == "" {
		return c, errors.New("network config: no state directory (Dir) given")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return c, fmt.Errorf("network config: state directory: %w", err)
	}
	c.Dir = dir
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return c, fmt.Errorf("network config: MTU %d: want 68 to 65535, or 0 for the default", c.MTU)
	}
	if c.UID < 0 || c.GID < 0 {
		return c, fmt.Errorf("network config: TAP owner %d:%d: ids cannot be negative", c.UID, c.GID)
	}
	if c.Uplink != "" {
		if err := CheckIfName(c.Uplink); err != nil {
			return c, fmt.Errorf("network config: uplink: %w", err)
		}
	}
	if c.NetnsDir == "" {
		c.NetnsDir = DefaultNetnsDir
	}
	if !filepath.IsAbs(c.NetnsDir) {
		return c, fmt.Errorf("network config: namespace directory %q is not an absolute path", c.NetnsDir)
	}
	if c.NICs == nil {
		c.NICs = []NICConfig{{}}
	}
	c.NICs = append([]NICConfig(nil), c.NICs...)
	ids, taps, ips := map[string]bool{}, map[string]bool{}, map[netip.Prefix]bool{}
	for i := range c.NICs {
		nic := &c.NICs[i]
		if nic.ID == "" {
			nic.ID = "eth" + strconv.Itoa(i)
		}
		if nic.TAP == "" {
			nic.TAP = TAPName(c.Owner, i)
		}
		if err := CheckIfName(nic.TAP); err != nil {
			return c, fmt.Errorf("network config: NIC %s: TAP: %w", nic.ID, err)
		}
		if nic.TAP == peerVeth && c.Netns {
			return c, fmt.Errorf("network config: NIC %s: TAP name %s is taken by the namespace's veth", nic.ID, peerVeth)
		}
		if ids[nic.ID] || taps[nic.TAP] {
			return c, fmt.Errorf("network config: NIC %s (TAP %s): duplicate id or TAP name", nic.ID, nic.TAP)
		}
		ids[nic.ID], taps[nic.TAP] = true, true
		if nic.GuestIP.IsValid() {
			if !c.Netns {
				return c, fmt.Errorf("network config: NIC %s: a fixed guest IP needs Netns (outside a namespace of its own it could collide with other VMs); leave it empty to lease one", nic.ID)
			}
			ip := nic.GuestIP.Unmap()
			s := netip.PrefixFrom(ip, subnetBits).Masked()
			if !ip.Is4() || ip == s.Addr() || ip == lastAddr(s) {
				return c, fmt.Errorf("network config: NIC %s: guest IP %s: want an IPv4 address usable in its /30 (not the network or broadcast address)", nic.ID, nic.GuestIP)
			}
			if ips[s] {
				return c, fmt.Errorf("network config: NIC %s: guest IP %s: another NIC of this VM uses the same /30", nic.ID, nic.GuestIP)
			}
			ips[s] = true
			nic.GuestIP = ip
		}
	}
	return c, nil
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4(be32(n))
}

// leasesNeeded is how many /30s Setup leases for c: one per NIC without a fixed guest IP, and
// one for the veth pair.
func (c Config) leasesNeeded() int {
	n := 0
	for _, nic := range c.NICs {
		if !nic.GuestIP.IsValid() {
			n++
		}
	}
	if c.Netns {
		n++
	}
	return n
}

// plan lays out the network of a checked c given its leased subnets (leasesNeeded of them)
// and the NAT uplink (empty without NAT).
func (c Config) plan(leased []netip.Prefix, uplink string) *Network {
	n := &Network{Owner: c.Owner, Dir: c.Dir}
	next := func() netip.Prefix { s := leased[0]; leased = leased[1:]; return s }
	for _, nc := range c.NICs {
		nic := NIC{ID: nc.ID, TAP: nc.TAP, MTU: c.MTU}
		if nc.GuestIP.IsValid() {
			nic.Subnet = netip.PrefixFrom(nc.GuestIP, subnetBits).Masked()
			nic.GuestIP = nc.GuestIP
			if h, g := subnetHosts(nic.Subnet); g == nc.GuestIP {
				nic.HostIP = h
			} else {
				nic.HostIP = g
			}
		} else {
			nic.Subnet = next()
			nic.HostIP, nic.GuestIP = subnetHosts(nic.Subnet)
		}
		nic.MAC = GuestMAC(nic.GuestIP).String()
		n.NICs = append(n.NICs, nic)
	}
	var sources []netip.Prefix
	if c.Netns {
		s := next()
		h, p := subnetHosts(s)
		n.Netns = &Namespace{
			Name: netnsName(c.Owner), Path: filepath.Join(c.NetnsDir, netnsName(c.Owner)),
			HostVeth: vethName(c.Owner), PeerVeth: peerVeth, Subnet: s, HostIP: h, PeerIP: p,
		}
		sources = []netip.Prefix{s}
	} else {
		for _, nic := range n.NICs {
			sources = append(sources, nic.Subnet)
		}
	}
	if uplink != "" {
		n.NAT = &NAT{Uplink: uplink, Sources: sources}
	}
	if c.KernelIPArg && len(n.NICs) > 0 {
		nic := n.NICs[0]
		n.BootArgs = KernelIPArg(netip.PrefixFrom(nic.GuestIP, subnetBits), nic.HostIP, "eth0")
	}
	return n
}

// Records: one JSON file per VM under <dir>/networks, written before anything is created, so
// that whatever a crash leaves behind is found again by Reclaim.

func recordDir(dir string) string { return filepath.Join(dir, "networks") }

func recordPath(dir, owner string) string { return filepath.Join(recordDir(dir), owner+".json") }

func writeRecord(n *Network) error {
	if err := os.MkdirAll(recordDir(n.Dir), 0o700); err != nil {
		return fmt.Errorf("network record directory: %w", err)
	}
	if err := writeJSON(recordPath(n.Dir, n.Owner), n); err != nil {
		return fmt.Errorf("write network record of %s: %w", n.Owner, err)
	}
	return nil
}

func removeRecord(dir, owner string) error {
	if err := os.Remove(recordPath(dir, owner)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove network record of %s: %w", owner, err)
	}
	return nil
}

// readRecords returns the records in dir. A record that cannot be read is reported in the
// error; the others are still returned.
func readRecords(dir string) ([]*Network, error) {
	ents, err := os.ReadDir(recordDir(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read network records: %w", err)
	}
	var ns []*Network
	var errs []error
	for _, e := range ents {
		owner, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || validOwner(owner) != nil {
			continue
		}
		n := new(Network)
		if err := readJSON(filepath.Join(recordDir(dir), e.Name()), n); err != nil {
			errs = append(errs, fmt.Errorf("network record of %s: %w", owner, err))
			continue
		}
		n.Owner, n.Dir = owner, dir
		ns = append(ns, n)
	}
	return ns, errors.Join(errs...)
}

// Option changes how Setup, Teardown and Reclaim behave.
type Option func(*options)

type options struct {
	logger  *slog.Logger
	tunPath string
	// fail, when set, is called after each step that creates something and makes Setup fail
	// there when it returns an error; tests use it to check the rollback.
	fail func(step string) error
}

// WithLogger sends debug logs of each step, and info logs of each network set up or torn
// down, to l. The default discards them.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

func newOptions(opts []Option) *options {
	o := &options{logger: slog.New(slog.DiscardHandler), tunPath: "/dev/net/tun"}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

func (o *options) step(name string) error {
	if o.fail == nil {
		return nil
	}
	return o.fail(name)
}
