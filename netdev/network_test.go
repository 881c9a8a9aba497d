package netdev

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok := Config{Owner: "vm1", Dir: dir}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no owner", func(c *Config) { c.Owner = "" }, "owner"},
		{"owner with slash", func(c *Config) { c.Owner = "a/b" }, "owner \"a/b\""},
		{"owner too long", func(c *Config) { c.Owner = strings.Repeat("a", 65) }, "1 to 64"},
		{"no dir", func(c *Config) { c.Dir = "" }, "no state directory"},
		{"bad MTU", func(c *Config) { c.MTU = 67 }, "MTU 67"},
		{"negative uid", func(c *Config) { c.UID = -1 }, "cannot be negative"},
		{"bad uplink", func(c *Config) { c.Uplink = "eth0/1" }, "uplink"},
		{"relative netns dir", func(c *Config) { c.NetnsDir = "netns" }, "not an absolute path"},
		{"long TAP", func(c *Config) { c.NICs = []NICConfig{{TAP: "smv0123456789abcdef"}} }, "1 to 15 bytes"},
		{"duplicate TAP", func(c *Config) { c.NICs = []NICConfig{{TAP: "smvx"}, {TAP: "smvx"}} }, "duplicate"},
		{"duplicate id", func(c *Config) { c.NICs = []NICConfig{{ID: "net"}, {ID: "net"}} }, "duplicate"},
		{"guest IP without netns", func(c *Config) { c.NICs = []NICConfig{{GuestIP: netip.MustParseAddr("172.16.0.2")}} }, "needs Netns"},
		{"guest IP is a network address", func(c *Config) {
			c.Netns = true
			c.NICs = []NICConfig{{GuestIP: netip.MustParseAddr("172.16.0.4")}}
		}, "network or broadcast"},
		{"guest IPv6", func(c *Config) {
			c.Netns = true
			c.NICs = []NICConfig{{GuestIP: netip.MustParseAddr("fd00::2")}}
		}, "IPv4"},
		{"guest IPs share a /30", func(c *Config) {
			c.Netns = true
			c.NICs = []NICConfig{{GuestIP: netip.MustParseAddr("172.16.0.2")}, {GuestIP: netip.MustParseAddr("172.16.0.1")}}
		}, "same /30"},
		{"TAP named like the veth", func(c *Config) { c.Netns = true; c.NICs = []NICConfig{{TAP: peerVeth}} }, "taken by"},
	} {
		c := ok
		tc.edit(&c)
		if _, err := c.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: check() = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	c, err := ok.check()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.NICs) != 1 || c.NICs[0].ID != "eth0" || c.NICs[0].TAP != TAPName("vm1", 0) || c.NetnsDir != DefaultNetnsDir {
		t.Errorf("defaults: %+v", c)
	}
}

func TestPlan(t *testing.T) {
	t.Parallel()
	c, err := Config{Owner: "vm1", Dir: "/run/x/net", NICs: []NICConfig{{}, {ID: "data", TAP: "smvdata"}}, MTU: 1400, KernelIPArg: true}.check()
	if err != nil {
		t.Fatal(err)
	}
	if c.leasesNeeded() != 2 {
		t.Fatalf("leasesNeeded = %d, want 2", c.leasesNeeded())
	}
	n := c.plan([]netip.Prefix{netip.MustParsePrefix("172.16.0.4/30"), netip.MustParsePrefix("172.16.0.8/30")}, "eth0")
	want := &Network{
		Owner: "vm1", Dir: "/run/x/net",
		NICs: []NIC{
			{ID: "eth0", TAP: TAPName("vm1", 0), MAC: "06:00:ac:10:00:06", MTU: 1400, Subnet: netip.MustParsePrefix("172.16.0.4/30"),
				HostIP: netip.MustParseAddr("172.16.0.5"), GuestIP: netip.MustParseAddr("172.16.0.6")},
			{ID: "data", TAP: "smvdata", MAC: "06:00:ac:10:00:0a", MTU: 1400, Subnet: netip.MustParsePrefix("172.16.0.8/30"),
				HostIP: netip.MustParseAddr("172.16.0.9"), GuestIP: netip.MustParseAddr("172.16.0.10")},
		},
		NAT:      &NAT{Uplink: "eth0", Sources: []netip.Prefix{netip.MustParsePrefix("172.16.0.4/30"), netip.MustParsePrefix("172.16.0.8/30")}},
		BootArgs: "ip=172.16.0.6::172.16.0.5:255.255.255.252::eth0:off",
	}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("plan:\n got %+v\nwant %+v", n, want)
	}
	if n.GuestAddr() != netip.MustParseAddr("172.16.0.6") {
		t.Errorf("GuestAddr = %s", n.GuestAddr())
	}

	// A record survives a JSON round trip unchanged.
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	var back Network
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, n) {
		t.Fatalf("JSON round trip:\n got %+v\nwant %+v", back, n)
	}
	if !strings.Contains(string(b), `"guest_ip":"172.16.0.6"`) || !strings.Contains(string(b), `"mac":"06:00:ac:10:00:06"`) {
		t.Errorf("JSON form: %s", b)
	}
}

func TestPlanNetnsClone(t *testing.T) {
	t.Parallel()
	guest := netip.MustParseAddr("172.16.0.2")
	c, err := Config{Owner: "clone-1", Dir: "/d", Netns: true, NetnsDir: "/tmp/ns",
		NICs: []NICConfig{{TAP: TAPName("original", 0), GuestIP: guest}}}.check()
	if err != nil {
		t.Fatal(err)
	}
	if c.leasesNeeded() != 1 {
		t.Fatalf("leasesNeeded = %d, want 1 (the veth pair only)", c.leasesNeeded())
	}
	n := c.plan([]netip.Prefix{netip.MustParsePrefix("172.16.0.12/30")}, "")
	nic := n.NICs[0]
	if nic.TAP != TAPName("original", 0) || nic.GuestIP != guest || nic.HostIP != netip.MustParseAddr("172.16.0.1") || nic.MAC != "06:00:ac:10:00:02" {
		t.Errorf("clone NIC: %+v", nic)
	}
	wantNS := &Namespace{Name: "smv-clone-1", Path: "/tmp/ns/smv-clone-1", HostVeth: vethName("clone-1"), PeerVeth: peerVeth,
		Subnet: netip.MustParsePrefix("172.16.0.12/30"), HostIP: netip.MustParseAddr("172.16.0.13"), PeerIP: netip.MustParseAddr("172.16.0.14")}
	if !reflect.DeepEqual(n.Netns, wantNS) {
		t.Errorf("namespace: %+v, want %+v", n.Netns, wantNS)
	}
	if n.NAT != nil || n.BootArgs != "" {
		t.Errorf("NAT %+v, boot args %q: want none", n.NAT, n.BootArgs)
	}
	if n.GuestAddr() != wantNS.PeerIP {
		t.Errorf("GuestAddr = %s, want the namespace's veth address %s", n.GuestAddr(), wantNS.PeerIP)
	}
	// The guest may also be the lower address of its /30.
	c.NICs[0].GuestIP = netip.MustParseAddr("172.16.0.1")
	if nic := c.plan([]netip.Prefix{netip.MustParsePrefix("172.16.0.12/30")}, "").NICs[0]; nic.HostIP != netip.MustParseAddr("172.16.0.2") {
		t.Errorf("host end for guest .1: %s", nic.HostIP)
	}
}
