package netdev

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestTAPName(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for _, vm := range []string{"a", "b", "web-1", "web-2", strings.Repeat("x", 200), ""} {
		for _, i := range []int{0, 1, 9, 10, 99, 100, 999} {
			name := TAPName(vm, i)
			if name != TAPName(vm, i) {
				t.Fatalf("TAPName(%q, %d) is not deterministic", vm, i)
			}
			if err := CheckIfName(name); err != nil || !strings.HasPrefix(name, Prefix) || len(name) > 15 {
				t.Errorf("TAPName(%q, %d) = %q: not a valid smv name (%v)", vm, i, name, err)
			}
			if !strings.HasSuffix(name, fmt.Sprintf("t%d", i)) {
				t.Errorf("TAPName(%q, %d) = %q: does not end with the index", vm, i, name)
			}
			key := fmt.Sprintf("%q/%d", vm, i)
			if prev, dup := seen[name]; dup {
				t.Errorf("TAPName collision: %s and %s both give %q", prev, key, name)
			}
			seen[name] = key
		}
	}
	if v := vethName("web-1"); len(v) > 15 || !strings.HasPrefix(v, Prefix) || v == TAPName("web-1", 0) {
		t.Errorf("vethName = %q", v)
	}
	if got := TAPName("a", 123456789012); len(got) > 15 {
		t.Errorf("TAPName with a huge index is %d bytes", len(got))
	}
}

func TestGuestMAC(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ ip, want string }{
		{"172.16.0.2", "06:00:ac:10:00:02"},
		{"10.255.1.254", "06:00:0a:ff:01:fe"},
		{"::ffff:172.16.0.6", "06:00:ac:10:00:06"},
	} {
		if got := GuestMAC(netip.MustParseAddr(tc.ip)).String(); got != tc.want {
			t.Errorf("GuestMAC(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
	if got := GuestMAC(netip.MustParseAddr("fd00::2")); got != nil {
		t.Errorf("GuestMAC of an IPv6 address = %s, want nil", got)
	}
	if got := GuestMAC(netip.Addr{}); got != nil {
		t.Errorf("GuestMAC of the zero Addr = %s, want nil", got)
	}
}

func TestKernelIPArg(t *testing.T) {
	t.Parallel()
	got := KernelIPArg(netip.MustParsePrefix("172.16.0.6/30"), netip.MustParseAddr("172.16.0.5"), "eth0")
	if want := "ip=172.16.0.6::172.16.0.5:255.255.255.252::eth0:off"; got != want {
		t.Errorf("KernelIPArg = %q, want %q", got, want)
	}
}

func ExampleGuestMAC() {
	fmt.Println(GuestMAC(netip.MustParseAddr("172.16.0.2")))
	// Output: 06:00:ac:10:00:02
}

func ExampleKernelIPArg() {
	fmt.Println(KernelIPArg(netip.MustParsePrefix("172.16.0.2/30"), netip.MustParseAddr("172.16.0.1"), "eth0"))
	// Output: ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off
}

func ExampleTAPName() {
	fmt.Println(TAPName("web-1", 0), TAPName("web-1", 1))
	// Output: smvc4719afa76t0 smvc4719afa76t1
}
