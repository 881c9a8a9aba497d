package netdev

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testutil"
)

// checkTAP checks a TAP made by Setup for nic of owner, through h.
func checkTAP(t *testing.T, h *netlink.Handle, owner string, nic NIC) {
	t.Helper()
	link, err := h.LinkByName(nic.TAP)
	if err != nil {
		t.Fatalf("TAP %s: %v", nic.TAP, err)
	}
	a := link.Attrs()
	if link.Type() != "tuntap" || a.Flags&(1<<0) == 0 || a.Alias != deviceAlias(owner) {
		t.Errorf("TAP %s: type %s, flags %v, alias %q", nic.TAP, link.Type(), a.Flags, a.Alias)
	}
	if nic.MTU != 0 && a.MTU != nic.MTU {
		t.Errorf("TAP %s: MTU %d, want %d", nic.TAP, a.MTU, nic.MTU)
	}
	addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
	if want := netip.PrefixFrom(nic.HostIP, 30).String(); len(addrs) != 1 || addrs[0].IPNet.String() != want {
		t.Errorf("TAP %s: addresses %v, want %s", nic.TAP, addrs, want)
	}
	if nic.MAC != GuestMAC(nic.GuestIP).String() || nic.Subnet.Bits() != 30 || !nic.Subnet.Contains(nic.HostIP) || !nic.Subnet.Contains(nic.GuestIP) {
		t.Errorf("NIC %+v: MAC or addresses do not match", nic)
	}
}

// nftList returns `nft list table ip smartvm` run in the calling thread's namespace, or ""
// when the nft tool is missing.
func nftList(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := exec.Command("nft", "list", "table", "ip", TableName).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}

func TestSetupTeardown(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir := t.TempDir()
	ctx := context.Background()
	n := setupOK(t, Config{Owner: "vm1", Dir: dir, NAT: true, MTU: 1400, KernelIPArg: true})

	if len(n.NICs) != 1 {
		t.Fatalf("NICs: %+v", n.NICs)
	}
	nic := n.NICs[0]
	if nic.TAP != TAPName("vm1", 0) || nic.ID != "eth0" || nic.Subnet.String() != "172.16.0.0/30" || nic.GuestIP.String() != "172.16.0.2" || nic.MAC != "06:00:ac:10:00:02" {
		t.Errorf("NIC: %+v", nic)
	}
	checkTAP(t, ns.h, "vm1", nic)
	if n.BootArgs != "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off" || n.GuestAddr() != nic.GuestIP {
		t.Errorf("boot args %q, guest address %s", n.BootArgs, n.GuestAddr())
	}
	if n.NAT == nil || n.NAT.Uplink != "upl0" || !slices.Equal(n.NAT.Sources, []netip.Prefix{nic.Subnet}) {
		t.Errorf("NAT: %+v", n.NAT)
	}
	if got, want := ruleComments(t, ns.f, chainPost), []string{"smartvm vm1 172.16.0.0/30"}; !slices.Equal(got, want) {
		t.Errorf("NAT rules %q, want %q", got, want)
	}
	if out := nftList(t); out != "" && !strings.Contains(out, `oifname "upl0" ip saddr 172.16.0.0/30 masquerade comment "smartvm vm1 172.16.0.0/30"`) {
		t.Errorf("nft shows:\n%s", out)
	}
	if got := readSysctl(t, ns.f, "ipv4/ip_forward"); got != "1" {
		t.Errorf("ip_forward = %s, want 1", got)
	}

	// The record and the lease are on disk.
	var rec Network
	if err := readJSON(recordPath(dir, "vm1"), &rec); err != nil || !reflect.DeepEqual(&rec, n) {
		t.Errorf("record: %+v, %v; want %+v", rec, err, n)
	}
	pool, _ := NewPool(dir, netip.Prefix{})
	if ls, _ := pool.Leases(ctx); len(ls) != 1 || ls[0].Owner != "vm1" || ls[0].Subnet != nic.Subnet {
		t.Errorf("leases: %+v", ls)
	}

	if err := n.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, "")
	if err := n.Teardown(ctx); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
}

// TestNATTableIsReferenceCounted: the table holds one rule per VM source and goes with the
// last one; a VM without NAT does not touch it.
func TestNATTableIsReferenceCounted(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir := t.TempDir()
	ctx := context.Background()
	a := setupOK(t, Config{Owner: "a", Dir: dir, NAT: true, NICs: []NICConfig{{}, {}}})
	b := setupOK(t, Config{Owner: "b", Dir: dir, NAT: true, Uplink: "upl0"})
	c := setupOK(t, Config{Owner: "c", Dir: dir})
	want := []string{"smartvm a 172.16.0.0/30", "smartvm a 172.16.0.4/30", "smartvm b 172.16.0.8/30"}
	if got := ruleComments(t, ns.f, chainPost); !slices.Equal(got, want) {
		t.Fatalf("rules %q, want %q", got, want)
	}
	if err := a.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ruleComments(t, ns.f, chainPost); !slices.Equal(got, want[2:]) {
		t.Fatalf("rules after a's teardown %q, want %q", got, want[2:])
	}
	if err := c.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if !ns.hasTable(t) {
		t.Fatal("table gone while b still uses it")
	}
	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, "")
}

func TestSetupNetns(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir, nsDir := t.TempDir(), t.TempDir()
	ctx := context.Background()
	n := setupOK(t, Config{Owner: "vm1", Dir: dir, NAT: true, Netns: true, NetnsDir: nsDir, NICs: []NICConfig{{}, {}}})

	vns := n.Netns
	if vns == nil || vns.Path != filepath.Join(nsDir, "smv-vm1") || vns.Subnet.String() != "172.16.0.8/30" {
		t.Fatalf("namespace: %+v", vns)
	}
	vf, err := os.Open(vns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer vf.Close()
	if err := checkNetns(vf); err != nil {
		t.Fatal(err)
	}
	vh, err := nsHandle(vf)
	if err != nil {
		t.Fatal(err)
	}
	defer vh.Close()

	// Inside: the TAPs, the veth end with its address and the default route through the host.
	for _, nic := range n.NICs {
		checkTAP(t, vh, "vm1", nic)
		if _, err := ns.h.LinkByName(nic.TAP); err == nil {
			t.Errorf("TAP %s is in the host namespace", nic.TAP)
		}
	}
	peer, err := vh.LinkByName(peerVeth)
	if err != nil {
		t.Fatal(err)
	}
	if addrs, _ := vh.AddrList(peer, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.0.10/30" {
		t.Errorf("namespace veth addresses %v", addrs)
	}
	routes, _ := vh.RouteList(nil, netlink.FAMILY_V4)
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Dst == nil || r.Dst.String() == "0.0.0.0/0" && r.Gw.String() == "172.16.0.9"
	}) {
		t.Errorf("no default route via 172.16.0.9 in the namespace: %v", routes)
	}
	if got := readSysctl(t, vf, "ipv4/ip_forward"); got != "1" {
		t.Errorf("ip_forward in the namespace = %s", got)
	}
	if got, want := ruleComments(t, vf, chainPost), []string{"smartvm vm1 172.16.0.0/30", "smartvm vm1 172.16.0.4/30"}; !slices.Equal(got, want) {
		t.Errorf("namespace masquerade rules %q, want %q", got, want)
	}
	if got := ruleComments(t, vf, chainPre); !slices.Equal(got, []string{"smartvm vm1"}) {
		t.Errorf("namespace DNAT rules %q", got)
	}
	err = InNetns(vns.Path, func() error {
		out := nftList(t)
		if out != "" && !strings.Contains(out, `iifname "veth0" ip daddr 172.16.0.10 dnat to 172.16.0.2`) {
			return fmt.Errorf("nft in the namespace shows:\n%s", out)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// Outside: the veth's host end, and NAT of the namespace's address only.
	host, err := ns.h.LinkByName(vns.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if addrs, _ := ns.h.AddrList(host, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.0.9/30" || host.Attrs().Alias != "smartvm vm1" {
		t.Errorf("host veth: addresses %v, alias %q", addrs, host.Attrs().Alias)
	}
	if got := ruleComments(t, ns.f, chainPost); !slices.Equal(got, []string{"smartvm vm1 172.16.0.8/30"}) {
		t.Errorf("host NAT rules %q", got)
	}
	if n.GuestAddr() != vns.PeerIP {
		t.Errorf("GuestAddr %s, want %s", n.GuestAddr(), vns.PeerIP)
	}
	// The namespace reaches the host's end of the veth (the traffic stays between the two
	// namespaces): a TCP connection from inside arrives from the namespace's address.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(vns.HostIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = InNetns(vns.Path, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("connect from the namespace to the host: %v", err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); from != vns.PeerIP {
		t.Errorf("connection from the namespace came from %s, want %s", from, vns.PeerIP)
	}
	c.Close()

	if err := n.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vns.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("namespace file still there: %v", err)
	}
	ns.checkClean(t, dir, nsDir)
}

// TestSetupNetnsDefaultDir: the namespace is where `ip netns` finds it.
func TestSetupNetnsDefaultDir(t *testing.T) {
	ns := enterTestNetns(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip tool:", err)
	}
	dir := t.TempDir()
	owner := fmt.Sprintf("netdev-test-%d", os.Getpid())
	n := setupOK(t, Config{Owner: owner, Dir: dir, Netns: true})
	if n.Netns.Path != filepath.Join(DefaultNetnsDir, "smv-"+owner) {
		t.Errorf("path %s", n.Netns.Path)
	}
	out, err := exec.Command("ip", "netns", "exec", "smv-"+owner, "ip", "-o", "link", "show").CombinedOutput()
	if err != nil || !strings.Contains(string(out), n.NICs[0].TAP) {
		t.Errorf("ip netns exec: %v:\n%s", err, out)
	}
	if err := n.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Netns.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("namespace %s left behind: %v", n.Netns.Path, err)
	}
	// Other test processes may use the shared directory, so only this test's entry is checked.
	ns.checkClean(t, dir, "")
}

// TestClonesShareGuestIP: two VMs restored from one snapshot keep its TAP name and guest
// address, each in its own namespace, reachable at different addresses.
func TestClonesShareGuestIP(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir, nsDir := t.TempDir(), t.TempDir()
	nic := NICConfig{TAP: TAPName("original", 0), GuestIP: netip.MustParseAddr("172.16.0.2")}
	var nets []*Network
	for _, name := range []string{"clone-1", "clone-2"} {
		n := setupOK(t, Config{Owner: name, Dir: dir, NAT: true, Netns: true, NetnsDir: nsDir, NICs: []NICConfig{nic}})
		nets = append(nets, n)
		if n.NICs[0].TAP != nic.TAP || n.NICs[0].GuestIP != nic.GuestIP {
			t.Errorf("%s: NIC %+v", name, n.NICs[0])
		}
	}
	if nets[0].GuestAddr() == nets[1].GuestAddr() {
		t.Errorf("both clones are reached at %s", nets[0].GuestAddr())
	}
	for _, n := range nets {
		if err := n.Teardown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ns.checkClean(t, dir, nsDir)
}

// TestSetupRollback makes each step fail in turn and checks that nothing is left.
func TestSetupRollback(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	injected := errors.New("injected failure")
	for _, netns := range []bool{false, true} {
		steps := []string{"record", "tap", "nat"}
		if netns {
			steps = []string{"record", "netns", "veth", "tap", "netns-nat", "nat"}
		}
		for _, step := range steps {
			dir, nsDir := t.TempDir(), t.TempDir()
			fail := func(o *options) {
				o.fail = func(s string) error {
					if s == step {
						return injected
					}
					return nil
				}
			}
			cfg := Config{Owner: "vm1", Dir: dir, NAT: true, Netns: netns, NetnsDir: nsDir, NICs: []NICConfig{{}, {}}}
			_, err := Setup(context.Background(), cfg, fail)
			if !errors.Is(err, injected) || !strings.Contains(err.Error(), step) {
				t.Errorf("netns %v, failing at %s: %v", netns, step, err)
			}
			ns.checkClean(t, dir, nsDir)
		}
	}
}

// dropNetAdmin removes CAP_NET_ADMIN from the calling thread's effective set (the test's
// goroutine is locked to its thread) until the returned function restores it.
func dropNetAdmin(t *testing.T) func() {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	orig := data
	data[0].Effective &^= 1 << capNetAdmin
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := unix.Capset(&hdr, &orig[0]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSetupErrors(t *testing.T) {
	ns := enterTestNetns(t)
	ctx := context.Background()
	dir := t.TempDir()

	t.Log("no uplink to detect")
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir, NAT: true}); !errors.Is(err, ErrUplinkNotFound) || !strings.Contains(err.Error(), "no IPv4 default route") {
		t.Errorf("NAT without a default route: %v", err)
	}
	ns.addUplink(t)
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir, NAT: true, Uplink: "nope0"}); !errors.Is(err, ErrUplinkNotFound) || !strings.Contains(err.Error(), "nope0") {
		t.Errorf("NAT through a missing device: %v", err)
	}
	ns.checkClean(t, dir, "")

	t.Log("no /dev/net/tun")
	noTUN := func(o *options) { o.tunPath = "/nonexistent/tun" }
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir}, noTUN); !errors.Is(err, ErrNoTUN) || !strings.Contains(err.Error(), "modprobe tun") {
		t.Errorf("without the TUN device: %v", err)
	}
	ns.checkClean(t, dir, "")

	t.Log("no CAP_NET_ADMIN")
	restore := dropNetAdmin(t)
	_, err := Setup(ctx, Config{Owner: "vm1", Dir: dir})
	restore()
	if !errors.Is(err, ErrPermission) || !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "setcap cap_net_admin+ep") ||
		strings.Count(err.Error(), "permission denied") != 1 {
		t.Errorf("without CAP_NET_ADMIN: %v (want ErrPermission and fs.ErrPermission, the fix, and \"permission denied\" once)", err)
	}
	ns.checkClean(t, dir, "")

	t.Log("pool exhausted, and the pool skips /30s that hold host addresses")
	one := Config{Owner: "vm1", Dir: dir, Pool: netip.MustParsePrefix("10.99.0.0/29")}
	n := setupOK(t, one)
	if n.NICs[0].Subnet.String() != "10.99.0.4/30" {
		t.Errorf("leased %s, want 10.99.0.4/30 (10.99.0.0/30 holds the uplink's 10.99.0.1)", n.NICs[0].Subnet)
	}
	two := one
	two.Owner = "vm2"
	if _, err := Setup(ctx, two); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("second VM from a full pool: %v", err)
	}

	t.Log("a network already set up for the owner")
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "already set up") {
		t.Errorf("second Setup for vm1: %v", err)
	}
	if err := n.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, "")

	t.Log("a foreign device holds the TAP's name")
	foreign := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: TAPName("vm1", 0)}, PeerName: "foreignpeer"}
	if err := ns.h.LinkAdd(foreign); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir}); !errors.Is(err, ErrExists) {
		t.Errorf("Setup over a foreign device: %v", err)
	}
	if _, err := ns.h.LinkByName(foreign.Name); err != nil {
		t.Errorf("rollback removed the foreign device: %v", err)
	}
	ns.h.LinkDel(foreign)
	ns.checkClean(t, dir, "")

	t.Log("a foreign nftables table called smartvm with an incompatible chain")
	c := ns.nft(t)
	tb := c.AddTable(natTable())
	c.AddChain(&nftables.Chain{Name: chainPost, Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityFilter})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := Setup(ctx, Config{Owner: "vm1", Dir: dir, NAT: true}); err == nil || !strings.Contains(err.Error(), "add NAT rules") {
		t.Errorf("Setup with an incompatible table: %v", err)
	}
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, "")

	t.Log("a cancelled context")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Setup(cctx, Config{Owner: "vm1", Dir: dir}); !errors.Is(err, context.Canceled) {
		t.Errorf("Setup with a cancelled ctx: %v", err)
	}
	ns.checkClean(t, dir, "")
}

// TestReclaim: networks of dead owners go, with leases held without a record; live ones
// stay.
func TestReclaim(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	ctx := context.Background()
	dir, nsDir := t.TempDir(), t.TempDir()
	live := setupOK(t, Config{Owner: "live", Dir: dir, NAT: true})
	setupOK(t, Config{Owner: "dead", Dir: dir, NAT: true, Netns: true, NetnsDir: nsDir})
	setupOK(t, Config{Owner: "dead2", Dir: dir})
	pool, _ := NewPool(dir, netip.Prefix{})
	if _, err := pool.Allocate(ctx, "ghost"); err != nil {
		t.Fatal(err)
	}
	alive := func(owner string) bool { return owner == "live" }
	for range 2 {
		if err := Reclaim(ctx, dir, alive); err != nil {
			t.Fatal(err)
		}
	}
	if got := ruleComments(t, ns.f, chainPost); !slices.Equal(got, []string{natTag("live", live.NICs[0].Subnet)}) {
		t.Errorf("rules after reclaim: %q", got)
	}
	if ls, _ := pool.Leases(ctx); len(ls) != 1 || ls[0].Owner != "live" {
		t.Errorf("leases after reclaim: %+v", ls)
	}
	checkTAP(t, ns.h, "live", live.NICs[0])
	if l := testutil.LinksWithPrefix(t, Prefix); len(l) != 1 {
		t.Errorf("devices after reclaim: %v", l)
	}
	if err := Reclaim(ctx, dir, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, nsDir)
	if err := Reclaim(ctx, t.TempDir(), alive); err != nil {
		t.Errorf("Reclaim of an empty directory: %v", err)
	}
}

// TestSetupConcurrent sets up and tears down networks from several goroutines at once (each
// entering the test's namespace).
func TestSetupConcurrent(t *testing.T) {
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir := t.TempDir()
	const n = 8
	nets := make([]*Network, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = InNetns(ns.Path, func() error {
				var err error
				nets[i], err = Setup(context.Background(), Config{Owner: fmt.Sprintf("vm%d", i), Dir: dir, NAT: true})
				return err
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	subnets := map[netip.Prefix]bool{}
	for _, nw := range nets {
		subnets[nw.NICs[0].Subnet] = true
	}
	if len(subnets) != n || len(ruleComments(t, ns.f, chainPost)) != n {
		t.Fatalf("%d distinct subnets and %d rules, want %d", len(subnets), len(ruleComments(t, ns.f, chainPost)), n)
	}
	for i := range n {
		wg.Go(func() {
			errs[i] = InNetns(ns.Path, func() error { return nets[i].Teardown(context.Background()) })
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ns.checkClean(t, dir, "")
}

func setupOK(t testing.TB, cfg Config, opts ...Option) *Network {
	t.Helper()
	n, err := Setup(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return n
}
