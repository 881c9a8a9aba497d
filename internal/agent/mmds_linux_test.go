package agent

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/testutil"
	"github.com/smartvm/smartvm/netdev"
)

// mmdsNetns serves mmds at addr:80 from a network namespace of its own, joined to the test's
// namespace by a veth pair whose test end is eth0, as a guest's NIC reaches Firecracker's
// metadata service. The test's goroutine must be in a namespace of its own (EnterNetns).
func mmdsNetns(t *testing.T, addr string, mmds *fakeMMDS) {
	t.Helper()
	peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "mmds0"}
	if err := netlink.LinkAdd(peer); err != nil {
		t.Skipf("cannot make a veth pair: %v", err)
	}
	type result struct {
		ln  net.Listener
		err error
	}
	res := make(chan result, 1)
	testNS, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer testNS.Close()
	go func() {
		// This thread goes into a new namespace and is never used again (it ends locked).
		runtime.LockOSThread()
		r := result{}
		defer func() { res <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		self, err := os.Open("/proc/thread-self/ns/net")
		if r.err = err; err != nil {
			return
		}
		defer self.Close()
		// Move the peer here from the test's namespace.
		h, err := netlink.NewHandleAt(netns.NsHandle(int(testNS.Fd())))
		if r.err = err; err != nil {
			return
		}
		defer h.Close()
		l, err := h.LinkByName("mmds0")
		if r.err = err; err != nil {
			return
		}
		if r.err = h.LinkSetNsFd(l, int(self.Fd())); r.err != nil {
			return
		}
		l, err = netlink.LinkByName("mmds0")
		if r.err = err; err != nil {
			return
		}
		a, _ := netlink.ParseAddr(addr + "/16")
		if r.err = netlink.AddrAdd(l, a); r.err != nil {
			return
		}
		if r.err = netlink.LinkSetUp(l); r.err != nil {
			return
		}
		r.ln, r.err = net.Listen("tcp", net.JoinHostPort(addr, "80"))
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("set up the metadata service's namespace: %v", r.err)
	}
	srv := httptest.NewUnstartedServer(mmds)
	srv.Listener.Close()
	srv.Listener = r.ln
	srv.Start()
	t.Cleanup(srv.Close)
}

// TestSetupNetworkMMDS: with no ip= argument, the agent gives eth0 a link-local address,
// reads smartvm/network from the metadata service through it (V2 token) and applies it:
// address, default route, resolv.conf and host name.
func TestSetupNetworkMMDS(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline, mmdsAddr string
		keepHostname            bool
	}{
		{"default address", "console=ttyS0", agentwire.MMDSDefaultAddr, false},
		{"given address", "smartvm.mmds=" + agentwire.MMDSGuestAddr, agentwire.MMDSGuestAddr, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testutil.EnterNetns(t, "")
			mmdsNetns(t, tc.mmdsAddr, &fakeMMDS{data: networkData(map[string]any{
				"address": "172.16.0.2/30", "gateway": "172.16.0.1", "dns": "172.16.0.1", "hostname": "web-1"})})
			var hostname string
			sys := guestSys{resolvConf: filepath.Join(t.TempDir(), "resolv.conf"), sethostname: func(n string) error { hostname = n; return nil }, dial: dialIn(ns.Path)}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := setupNetworkMMDS(ctx, slog.New(slog.DiscardHandler), tc.cmdline, sys, tc.keepHostname); err != nil {
				t.Fatal(err)
			}
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				t.Fatal(err)
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "172.16.0.2/30" || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("eth0: %v, up %v (%v)", addrs, l.Attrs().Flags&net.FlagUp != 0, err)
			}
			routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			var gw string
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
					gw = r.Gw.String()
				}
			}
			if gw != "172.16.0.1" {
				t.Errorf("default route via %q, want 172.16.0.1 (routes %v)", gw, routes)
			}
			if b, err := os.ReadFile(sys.resolvConf); err != nil || string(b) != "nameserver 172.16.0.1\n" {
				t.Errorf("resolv.conf %q, %v", b, err)
			}
			if want := map[bool]string{false: "web-1", true: ""}[tc.keepHostname]; hostname != want {
				t.Errorf("host name set to %q, want %q", hostname, want)
			}
		})
	}
}

// TestSetupNetworkMMDSAbsent: without eth0, or with smartvm.mmds=off, nothing happens; with
// eth0 but no metadata service, the default address gives up quietly and soon, and an
// explicit one reports the failure.
func TestSetupNetworkMMDSAbsent(t *testing.T) {
	ns := testutil.EnterNetns(t, "")
	sys := guestSys{resolvConf: filepath.Join(t.TempDir(), "resolv.conf"), sethostname: func(string) error {
		t.Error("host name set")
		return nil
	}, dial: dialIn(ns.Path)}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	if err := setupNetworkMMDS(ctx, log, "", sys, false); err != nil {
		t.Errorf("without eth0: %v", err)
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "nobody0"}); err != nil {
		t.Skipf("cannot make a veth pair: %v", err)
	}
	if err := setupNetworkMMDS(ctx, log, "smartvm.mmds=off", sys, false); err != nil {
		t.Errorf("with smartvm.mmds=off: %v", err)
	}
	if l, _ := netlink.LinkByName("eth0"); l != nil && l.Attrs().Flags&net.FlagUp != 0 {
		t.Error("smartvm.mmds=off brought eth0 up")
	}
	if err := setupNetworkMMDS(ctx, log, "", sys, false); err != nil {
		t.Errorf("no metadata service at the default address: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := setupNetworkMMDS(ctx, log, "smartvm.mmds=169.254.170.2", sys, false)
	if err == nil || !strings.Contains(err.Error(), "169.254.170.2") {
		t.Errorf("no metadata service at a given address: %v, want an error naming it", err)
	}
}

// dialIn connects from the network namespace at path: the HTTP transport dials from
// goroutines of its own, whose threads are in the host's namespace, where a cloud host may
// have a metadata service of its own at the same address.
func dialIn(path string) dialTCP {
	return func(ctx context.Context, addr string) (conn net.Conn, err error) {
		nerr := netdev.InNetns(path, func() error {
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", addr)
			return nil
		})
		if nerr != nil {
			return nil, nerr
		}
		return conn, err
	}
}
