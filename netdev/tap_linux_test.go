package netdev

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestCreateTAP(t *testing.T) {
	ns := enterTestNetns(t)
	name := TAPName("tap-test", 0)
	tap, err := CreateTAP(name, TAPOptions{MTU: 1400, UID: 1234, GID: 4321, Addr: netip.MustParsePrefix("172.16.0.1/30"), Tag: "tap-test"})
	if err != nil {
		t.Fatal(err)
	}
	link, err := ns.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a := link.Attrs()
	if link.Type() != "tuntap" || a.MTU != 1400 || a.Flags&(1<<0) == 0 || a.Alias != "smartvm tap-test" || a.Index != tap.Index {
		t.Errorf("TAP: type %s, MTU %d, flags %v, alias %q, index %d (want %d)", link.Type(), a.MTU, a.Flags, a.Alias, a.Index, tap.Index)
	}
	tt := link.(*netlink.Tuntap)
	if tt.Mode != netlink.TUNTAP_MODE_TAP || tt.Owner != 1234 || tt.Group != 4321 || tt.NonPersist {
		t.Errorf("TAP: mode %v, owner %d, group %d, persistent %v", tt.Mode, tt.Owner, tt.Group, !tt.NonPersist)
	}
	addrs, err := ns.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.0.1/30" {
		t.Errorf("addresses %v, want 172.16.0.1/30", addrs)
	}

	// The name is taken now: a second create fails with EBUSY, and leaves the first alone.
	if _, err := CreateTAP(name, TAPOptions{}); !errors.Is(err, ErrExists) || !errors.Is(err, unix.EBUSY) {
		t.Errorf("second CreateTAP: %v, want ErrExists and EBUSY", err)
	}
	if _, err := ns.h.LinkByName(name); err != nil {
		t.Errorf("the first TAP is gone after a failed second create: %v", err)
	}

	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tap.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := ns.h.LinkByName(name); err == nil {
		t.Error("TAP still exists after Close")
	}
	ns.checkClean(t, t.TempDir(), "")
}

func TestCreateTAPDefaultsAndDelete(t *testing.T) {
	ns := enterTestNetns(t)
	tap, err := CreateTAP("smvplain", TAPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	link, _ := ns.h.LinkByName("smvplain")
	if link.Attrs().MTU != 1500 || link.Attrs().Alias != "smartvm" || link.Attrs().Flags&(1<<0) == 0 {
		t.Errorf("TAP with defaults: MTU %d, alias %q, flags %v", link.Attrs().MTU, link.Attrs().Alias, link.Attrs().Flags)
	}
	// The kernel reports no owner and group when they are unset, which parses as 0.
	if tt := link.(*netlink.Tuntap); tt.Owner != 0 || tt.Group != 0 {
		t.Errorf("owner %d, group %d, want both unset", tt.Owner, tt.Group)
	}
	if err := DeleteTAP(tap.Name); err != nil {
		t.Fatal(err)
	}
	if err := DeleteTAP(tap.Name); err != nil {
		t.Errorf("DeleteTAP of a missing device: %v", err)
	}
	if err := tap.Close(); err != nil {
		t.Errorf("Close after DeleteTAP: %v", err)
	}
	ns.checkClean(t, t.TempDir(), "")
}

// TestCreateTAPNeverTouchesForeignDevices: a device smartvm did not make (a veth, or a TAP
// without smartvm's alias) blocks the name, and neither CreateTAP nor DeleteTAP changes it.
func TestCreateTAPNeverTouchesForeignDevices(t *testing.T) {
	ns := enterTestNetns(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "smvforeign", MTU: 1280}, PeerName: "foreignpeer"}
	if err := ns.h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	foreignTAP := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "smvforeigntap"}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := ns.h.LinkAdd(foreignTAP); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"smvforeign", "smvforeigntap"} {
		_, err := CreateTAP(name, TAPOptions{MTU: 9000, Addr: netip.MustParsePrefix("10.0.0.1/30")})
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "ip link del "+name) {
			t.Errorf("CreateTAP(%s) over a foreign device: %v", name, err)
		}
		if err := DeleteTAP(name); !errors.Is(err, ErrNotOwned) {
			t.Errorf("DeleteTAP(%s) of a foreign device: %v, want ErrNotOwned", name, err)
		}
		link, err := ns.h.LinkByName(name)
		if err != nil {
			t.Fatalf("foreign %s is gone: %v", name, err)
		}
		addrs, _ := ns.h.AddrList(link, netlink.FAMILY_V4)
		if link.Attrs().Flags&(1<<0) != 0 || len(addrs) != 0 || link.Attrs().Alias != "" || link.Attrs().MTU == 9000 {
			t.Errorf("foreign %s was changed: %+v, addresses %v", name, link.Attrs(), addrs)
		}
		if err := ns.h.LinkDel(link); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCreateTAPErrors(t *testing.T) {
	ns := enterTestNetns(t)
	for _, tc := range []struct {
		name string
		opts TAPOptions
		want string
	}{
		{"", TAPOptions{}, "want 1 to 15 bytes"},
		{"smv-name-too-long", TAPOptions{}, "want 1 to 15 bytes"},
		{"smv/bad", TAPOptions{}, "contains '/'"},
		{"smvmtu", TAPOptions{MTU: 10}, "MTU 10"},
		{"smvuid", TAPOptions{UID: -1}, "cannot be negative"},
	} {
		if _, err := CreateTAP(tc.name, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateTAP(%q, %+v) = %v, want an error containing %q", tc.name, tc.opts, err, tc.want)
		}
	}
	// No /dev/net/tun.
	_, err := createTAP(ns.f, ns.h, "smvnotun", TAPOptions{}, "/nonexistent/tun")
	if !errors.Is(err, ErrNoTUN) || !strings.Contains(err.Error(), "modprobe tun") {
		t.Errorf("createTAP without the TUN device: %v", err)
	}
	// A failure after TUNSETIFF (here: the device is looked up in another namespace) leaves
	// no device: it is not persistent until everything else is done.
	other := filepath.Join(t.TempDir(), "other")
	if err := createNetns(other); err != nil {
		t.Fatal(err)
	}
	defer deleteNetns(other)
	of, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	oh, err := nsHandle(of)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	if _, err = createTAP(ns.f, oh, "smvhalf", TAPOptions{}, "/dev/net/tun"); err == nil {
		t.Error("createTAP with the wrong netlink handle succeeded")
	}
	ns.checkClean(t, t.TempDir(), "")
}
