package smartvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
	"github.com/smartvm/smartvm/netdev"
)

// These tests give VMs managed networks. Each runs in a network namespace of its own, which
// the test's goroutine enters on a locked thread: Start, Stop and the reaping it calls work in
// that namespace, and Firecracker (the fake) is started in it (or in the VM's namespace, which
// the test's namespace is the host of). Nothing touches the host's devices or firewall.

// testNetns is the network namespace a test created and entered.
type testNetns struct {
	*testutil.Netns
}

// enterTestNetns locks the test's goroutine to its OS thread and moves the thread into a new
// network namespace, with lo up, until the test ends (testutil.EnterNetns, which also checks
// that the host's namespace gains no smv* device). Call it right after CheckLeaks and before
// anything that registers a cleanup needing the namespace (the manager, VMs). It skips the
// test when not root or when namespaces cannot be made.
func enterTestNetns(t *testing.T) *testNetns {
	t.Helper()
	return &testNetns{Netns: testutil.EnterNetns(t, netdev.Prefix)}
}

// smvLinks lists the devices called smv* in the calling thread's namespace.
func smvLinks(t *testing.T) []string { return testutil.LinksWithPrefix(t, netdev.Prefix) }

// addUplink adds the stand-in uplink (testutil.AddUplink) for NAT. It skips the test when the
// kernel cannot make veth devices or masquerade.
func (ns *testNetns) addUplink(t *testing.T) {
	t.Helper()
	testutil.NeedUplink(t)
	// Skip unless the kernel can masquerade: set up and tear down a NAT network.
	n, err := netdev.Setup(context.Background(), netdev.Config{Owner: "nat-probe", Dir: t.TempDir(), NAT: true})
	if err != nil {
		t.Skipf("cannot set up NAT in a test namespace (nf_tables, nft_masq): %v", err)
	}
	if err := n.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// hasNATTable reports whether smartvm's nftables table exists in the test's namespace (never,
// where nftables cannot be used).
func (ns *testNetns) hasNATTable(t *testing.T) bool {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.File.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Logf("nftables not usable: %v", err)
		return false
	}
	return slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == netdev.TableName })
}

// checkNetClean fails the test if the test's namespace holds a smv device or smartvm's
// nftables table, the runtime root's net/ holds a lease or record, or nsDir a namespace.
func (ns *testNetns) checkNetClean(t *testing.T, root, nsDir string) {
	t.Helper()
	if l := smvLinks(t); len(l) > 0 {
		t.Errorf("devices left: %v", l)
	}
	if ns.hasNATTable(t) {
		t.Errorf("nftables table %s left", netdev.TableName)
	}
	for _, sub := range []string{"leases", "networks"} {
		ents, _ := os.ReadDir(filepath.Join(root, "net", sub))
		for _, e := range ents {
			t.Errorf("net/%s/%s left", sub, e.Name())
		}
	}
	if nsDir != "" {
		if ents, _ := os.ReadDir(nsDir); len(ents) > 0 {
			t.Errorf("namespaces left in %s: %v", nsDir, ents)
		}
	}
}

// sameNetns reports whether process pid runs in the network namespace at path.
func sameNetns(t *testing.T, pid int, path string) bool {
	t.Helper()
	a, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(a, b)
}

// path names the test namespace for sameNetns and netdev.InNetns.

// netSetup is fakeSetup for network tests: leak checks, a namespace, a root, a manager whose
// VM namespaces go to a temporary directory.
func netSetup(t *testing.T) (ns *testNetns, mgr *Manager, root, nsDir, kernel string) {
	t.Helper()
	testutil.CheckLeaks(t)
	ns = enterTestNetns(t)
	root = testRoot(t)
	nsDir = t.TempDir()
	kernel = guestKernel(t)
	mgr = newManager(t, root, testutil.Link(t, "firecracker"), WithNetnsDir(nsDir))
	return ns, mgr, root, nsDir, kernel
}

// vmConfigOf asks the VM's Firecracker for its interfaces (iface_id, host_dev_name and
// guest_mac) and boot arguments.
func vmConfigOf(t *testing.T, m *Machine) (ifaces []string, bootArgs string) {
	t.Helper()
	cfg, err := m.Client().GetVMConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cfg.NetworkInterfaces {
		ifaces = append(ifaces, n.IfaceID+" "+n.HostDevName+" "+n.GuestMAC)
	}
	return ifaces, cfg.BootSource.BootArgs
}

// killVM kills m and waits until it has cleaned up.
func killVM(t *testing.T, m *Machine) {
	t.Helper()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
}

// TestNetworkOneNIC starts a VM with the default network (one NIC, no NAT) in both boot modes:
// the TAP is up in the caller's namespace, Firecracker runs there and gets the NIC and the ip=
// argument, state.json and List report the guest address, and everything goes with the VM.
func TestNetworkOneNIC(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		ns, mgr, root, nsDir, kernel := netSetup(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.BootMode = mode
		spec.Network = &NetworkSpec{KernelIPArg: true, MTU: 1400}
		m := start(t, mgr, spec)

		info := m.Info()
		n := info.Network
		if n == nil || len(n.NICs) != 1 || info.GuestIP != "172.16.0.2" {
			t.Fatalf("network %+v, guest ip %q", n, info.GuestIP)
		}
		nic := n.NICs[0]
		if nic.ID != "eth0" || nic.TAP != netdev.TAPName(m.Name(), 0) || nic.MAC != "06:00:ac:10:00:02" || nic.HostIP.String() != "172.16.0.1" {
			t.Errorf("nic %+v", nic)
		}
		ifc, err := net.InterfaceByName(nic.TAP)
		if err != nil || ifc.MTU != 1400 || ifc.Flags&net.FlagUp == 0 {
			t.Fatalf("tap %s: %+v, %v", nic.TAP, ifc, err)
		}
		if !sameNetns(t, m.PID(), ns.Path) {
			t.Error("firecracker does not run in the namespace its TAP is in")
		}
		ifaces, bootArgs := vmConfigOf(t, m)
		if want := []string{"eth0 " + nic.TAP + " 06:00:ac:10:00:02"}; !slices.Equal(ifaces, want) {
			t.Errorf("firecracker's interfaces %q, want %q", ifaces, want)
		}
		if want := spec.BootArgs + " " + n.BootArgs; bootArgs != want || !strings.Contains(n.BootArgs, "ip=172.16.0.2::172.16.0.1:") {
			t.Errorf("boot args %q, want %q", bootArgs, want)
		}
		if m.Spec().Network.Pool != DefaultNetworkPool || m.Spec().Network.NICs[0].ID != "eth0" {
			t.Errorf("spec network %+v", m.Spec().Network)
		}
		if ns.hasNATTable(t) {
			t.Error("NAT table without NAT")
		}
		infos, err := mgr.List(context.Background())
		if err != nil || len(infos) != 1 || infos[0].GuestIP != "172.16.0.2" || infos[0].Network == nil || infos[0].Network.NICs[0].TAP != nic.TAP {
			t.Fatalf("list: %+v, %v", infos, err)
		}

		killVM(t, m)
		if _, err := net.InterfaceByName(nic.TAP); err == nil {
			t.Errorf("tap %s left after the vm ended", nic.TAP)
		}
		ns.checkNetClean(t, root, nsDir)
	})
}

// TestNetworkTwoNICsNAT: two NICs with NAT: each gets its /30 and MAC, MMDS reaches both by
// default, and the NAT table appears with the VM and goes with it.
func TestNetworkTwoNICsNAT(t *testing.T) {
	ns, mgr, root, nsDir, kernel := netSetup(t)
	ns.addUplink(t)
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Network = &NetworkSpec{NICs: []NICSpec{{}, {ID: "data"}}, NAT: true}
	spec.MMDS = &MMDSSpec{}
	m := start(t, mgr, spec)
	n := m.Info().Network
	if len(n.NICs) != 2 || n.NICs[1].ID != "data" || n.NICs[1].Subnet.String() != "172.16.0.4/30" || n.NICs[1].MAC != "06:00:ac:10:00:06" {
		t.Fatalf("nics %+v", n.NICs)
	}
	if n.NAT == nil || n.NAT.Uplink != testutil.UplinkName || !ns.hasNATTable(t) {
		t.Fatalf("NAT %+v, table %v", n.NAT, ns.hasNATTable(t))
	}
	if got := m.Spec().MMDS.Interfaces; !slices.Equal(got, []string{"eth0", "data"}) {
		t.Errorf("mmds interfaces %q", got)
	}
	ifaces, _ := vmConfigOf(t, m)
	if len(ifaces) != 2 {
		t.Errorf("firecracker's interfaces %q", ifaces)
	}
	for _, nic := range n.NICs {
		if _, err := net.InterfaceByName(nic.TAP); err != nil {
			t.Errorf("tap %s: %v", nic.TAP, err)
		}
	}
	killVM(t, m)
	ns.checkNetClean(t, root, nsDir)
}

// TestNetworkNamespace: a VM with a namespace of its own: the TAP lives inside it, Firecracker
// runs inside it, the host reaches the guest at the namespace's veth address, and the
// namespace, the veth pair and the NAT rules go with the VM.
func TestNetworkNamespace(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		ns, mgr, root, nsDir, kernel := netSetup(t)
		ns.addUplink(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.BootMode = mode
		spec.Network = &NetworkSpec{Namespace: true, NAT: true}
		m := start(t, mgr, spec)
		info := m.Info()
		n := info.Network
		if n.Netns == nil || n.Netns.Path != filepath.Join(nsDir, "smv-"+m.Name()) || info.GuestIP != n.Netns.PeerIP.String() {
			t.Fatalf("namespace %+v, guest ip %s", n.Netns, info.GuestIP)
		}
		if !sameNetns(t, m.PID(), n.Netns.Path) {
			t.Error("firecracker does not run in the vm's namespace")
		}
		if _, err := net.InterfaceByName(n.NICs[0].TAP); err == nil {
			t.Error("the TAP is in the caller's namespace")
		}
		if _, err := net.InterfaceByName(n.Netns.HostVeth); err != nil {
			t.Errorf("host veth: %v", err)
		}
		if !ns.hasNATTable(t) {
			t.Error("no NAT table")
		}
		killVM(t, m)
		ns.checkNetClean(t, root, nsDir)
	})
}

// TestNetworkRollback: when the network cannot be built, or a later step fails, nothing of
// the VM is left, and other VMs keep theirs.
func TestNetworkRollback(t *testing.T) {
	t.Run("pool exhausted", func(t *testing.T) {
		ns, mgr, root, nsDir, kernel := netSetup(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.Network = &NetworkSpec{Pool: "10.77.0.0/30"}
		first := start(t, mgr, spec)
		_, err := mgr.Start(context.Background(), spec)
		var se *StartError
		if !errors.As(err, &se) || se.Step != "set up the network" || !errors.Is(err, netdev.ErrPoolExhausted) {
			t.Fatalf("second vm on a /30 pool: %v", err)
		}
		if names, _ := os.ReadDir(filepath.Join(root, "vms")); len(names) != 1 {
			t.Errorf("vm dirs %v, want the first vm's alone", names)
		}
		if _, err := net.InterfaceByName(first.Info().Network.NICs[0].TAP); err != nil {
			t.Errorf("the first vm lost its tap: %v", err)
		}
		killVM(t, first)
		ns.checkNetClean(t, root, nsDir)
	})
	t.Run("uplink missing", func(t *testing.T) {
		ns, mgr, root, nsDir, kernel := netSetup(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.Network = &NetworkSpec{NAT: true, Uplink: "nope0"}
		if _, err := mgr.Start(context.Background(), spec); !errors.Is(err, netdev.ErrUplinkNotFound) {
			t.Fatalf("start: %v, want ErrUplinkNotFound", err)
		}
		ns.checkNetClean(t, root, nsDir)
	})
	t.Run("firecracker fails", func(t *testing.T) {
		fakeEnv(t, "", fakefc.ModeExitEarly)
		ns, mgr, root, nsDir, kernel := netSetup(t)
		ns.addUplink(t)
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.Network = &NetworkSpec{NAT: true, Namespace: true}
		_, err := mgr.Start(context.Background(), spec)
		var se *StartError
		if !errors.As(err, &se) || se.Step != "wait for the API socket" {
			t.Fatalf("start: %v", err)
		}
		ns.checkNetClean(t, root, nsDir)
	})
}

// TestNetworkNeedsNetAdmin: without CAP_NET_ADMIN, Start fails before it builds anything,
// saying what is missing and how to grant it. The test drops the capability from its own
// thread's effective set for the call.
func TestNetworkNeedsNetAdmin(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		runtime.UnlockOSThread()
		t.Skipf("cannot read capabilities: %v", err)
	}
	saved := caps
	caps[0].Effective &^= 1 << unix.CAP_NET_ADMIN
	if err := unix.Capset(&hdr, &caps[0]); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Network = &NetworkSpec{}
	_, err := mgr.Start(context.Background(), spec)
	if err := unix.Capset(&hdr, &saved[0]); err != nil {
		// The thread keeps the reduced set: leave it locked, so it is discarded.
		t.Fatalf("restore capabilities: %v", err)
	}
	runtime.UnlockOSThread()
	var se *StartError
	if !errors.As(err, &se) || se.Step != "set up the network" || !errors.Is(err, netdev.ErrPermission) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("start without CAP_NET_ADMIN: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left: %v", ents)
	}
}

// TestNetworkOwnerCrashReaped kills a process that owns a VM with a network (NAT and a
// namespace of its own): the VM dies with it, and the next manager removes its network.
func TestNetworkOwnerCrashReaped(t *testing.T) {
	testutil.CheckLeaks(t)
	ns := enterTestNetns(t)
	ns.addUplink(t)
	root, nsDir := testRoot(t), t.TempDir()
	bin := testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Network = &NetworkSpec{NAT: true, Namespace: true, NICs: []NICSpec{{}, {}}}
	// Started from this locked thread, the owner runs in the test's namespace.
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, NetnsDir: nsDir})
	if l := smvLinks(t); len(l) != 1 || !ns.hasNATTable(t) {
		t.Fatalf("while the owner runs: devices %v, NAT table %v", l, ns.hasNATTable(t))
	}
	killOwner(t, owner)
	if !processGone(pid, waitLong) {
		t.Fatalf("firecracker %d outlived its owner", pid)
	}
	mgr := newManager(t, root, bin, WithNetnsDir(nsDir)) // reaps
	if infos, err := mgr.List(context.Background()); err != nil || len(infos) != 0 {
		t.Fatalf("list after reaping: %v, %v", infos, err)
	}
	ns.checkNetClean(t, root, nsDir)
}

// TestNetworkReclaimUnrecorded: a network whose VM left no state.json (its owner died between
// building the network and recording it) is removed by reaping once the VM's directory is
// gone; the networks of live VMs are left alone.
func TestNetworkReclaimUnrecorded(t *testing.T) {
	ns, mgr, root, nsDir, kernel := netSetup(t)
	ctx := context.Background()
	live := start(t, mgr, func() MachineSpec {
		s := guestSpec(kernel, testguest.ModeHalt)
		s.Network = &NetworkSpec{}
		return s
	}())
	ghost, err := netdev.Setup(ctx, netdev.Config{Owner: "ghost", Dir: filepath.Join(root, "net")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(ghost.NICs[0].TAP); err == nil {
		t.Error("the dead vm's tap is still there")
	}
	if _, err := net.InterfaceByName(live.Info().Network.NICs[0].TAP); err != nil {
		t.Errorf("the live vm's tap: %v", err)
	}
	killVM(t, live)
	ns.checkNetClean(t, root, nsDir)
}

// attachTAP opens the TAP called name in the namespace at nsPath as Firecracker does
// (TUNSETIFF) and closes it again: EBUSY means a process holds it.
func attachTAP(t *testing.T, nsPath, name string) error {
	t.Helper()
	var ioctlErr error
	err := netdev.InNetns(nsPath, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		ioctlErr = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ioctlErr
}

// TestRealNetwork boots the test guest under the real Firecracker with a managed NIC, in both
// boot modes and in a namespace of the VM's own: the VM starts, Firecracker holds the TAP
// while it runs (opening it again gives EBUSY), and the TAP is gone once the VM has stopped.
func TestRealNetwork(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mode      BootMode
		namespace bool
	}{
		{"api", BootModeAPI, false},
		{"config-file", BootModeConfigFile, false},
		{"namespace", BootModeAPI, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := testutil.FirecrackerBin(t)
			testutil.CheckLeaks(t)
			ns := enterTestNetns(t)
			root, nsDir := testRoot(t), t.TempDir()
			mgr := newManager(t, root, bin, WithNetnsDir(nsDir))
			spec := guestSpec(guestKernel(t), testguest.ModeHalt)
			spec.BootMode = tc.mode
			spec.Network = &NetworkSpec{Namespace: tc.namespace}
			m := start(t, mgr, spec)
			followConsole(t, m).waitFor(t, testguest.HaltLine)
			n := m.Info().Network
			tap, where := n.NICs[0].TAP, ns.Path
			if tc.namespace {
				where = n.Netns.Path
			}
			if err := attachTAP(t, where, tap); !errors.Is(err, unix.EBUSY) {
				t.Fatalf("opening tap %s while firecracker runs: %v, want EBUSY", tap, err)
			}
			killVM(t, m)
			if !tc.namespace {
				if _, err := net.InterfaceByName(tap); err == nil {
					t.Errorf("tap %s left after the vm stopped", tap)
				}
			}
			ns.checkNetClean(t, root, nsDir)
		})
	}
}

// TestNetworkSnapshotRestore: a restored VM gets its NICs back with the TAP names and guest
// addresses its snapshot holds. In the host's namespace the snapshot's /30 must be free
// again, or Restore fails (and leaves nothing); in a namespace of the VM's own the address is
// always available.
func TestNetworkSnapshotRestore(t *testing.T) {
	for _, namespace := range []bool{false, true} {
		t.Run(fmt.Sprintf("namespace=%v", namespace), func(t *testing.T) {
			ns, mgr, root, nsDir, kernel := netSetup(t)
			ctx := context.Background()
			spec := guestSpec(kernel, testguest.ModeHalt)
			spec.Name = "snapnet"
			spec.Network = &NetworkSpec{Namespace: namespace}
			orig := start(t, mgr, spec)
			snap, err := orig.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
			if err != nil {
				t.Fatal(err)
			}
			want := orig.Info().Network.NICs[0]
			if snap.Network == nil || snap.Network.NICs[0] != want {
				t.Fatalf("snapshot network %+v, want the vm's %+v", snap.Network, want)
			}
			killVM(t, orig)

			// Another VM takes the first free /30, the snapshot's.
			other := guestSpec(kernel, testguest.ModeHalt)
			other.Network = &NetworkSpec{}
			thief := start(t, mgr, other)
			m, err := mgr.Restore(ctx, snap, RestoreSpec{})
			if !namespace {
				var se *StartError
				if !errors.As(err, &se) || se.Step != "set up the network" || !strings.Contains(err.Error(), "network.namespace") {
					t.Fatalf("restore while the snapshot's /30 is taken: %v", err)
				}
				killVM(t, thief)
				if m, err = mgr.Restore(ctx, snap, RestoreSpec{}); err != nil {
					t.Fatal(err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			got := m.Info().Network.NICs[0]
			if got.TAP != want.TAP || got.GuestIP != want.GuestIP || got.MAC != want.MAC {
				t.Errorf("restored nic %+v, want %+v", got, want)
			}
			killVM(t, m)
			if namespace {
				killVM(t, thief)
			}
			ns.checkNetClean(t, root, nsDir)
		})
	}
}

// TestNetworkDetachedAttached: a detached VM with a network outlives its starter; a manager
// that attaches it stops it and, with no owner left, removes the network (in the namespace
// Attach was called in).
func TestNetworkDetachedAttached(t *testing.T) {
	testutil.CheckLeaks(t)
	ns := enterTestNetns(t)
	root, nsDir := testRoot(t), t.TempDir()
	bin := testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Name = "roamer"
	spec.Network = &NetworkSpec{}
	_, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Detached: true, Exit: true, NetnsDir: nsDir})
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	mgr := newManager(t, root, bin, WithNetnsDir(nsDir))
	m, err := mgr.Attach(context.Background(), "roamer")
	if err != nil {
		t.Fatal(err)
	}
	if info := m.Info(); info.GuestIP != "172.16.0.2" || info.Network == nil {
		t.Fatalf("attached info %+v", info)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ns.checkNetClean(t, root, nsDir)
}
