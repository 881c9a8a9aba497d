package smartvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
	"github.com/smartvm/smartvm/netdev"
)

// cloneNetworked clones a running counter guest with a managed network in the host's
// namespace n times: each clone runs in a network namespace of its own with the snapshot's
// guest address, on a TAP its Firecracker holds (of the clone's own name where the release
// has network_overrides), and counts on; the network is gone once they stop.
func cloneNetworked(t *testing.T, bin string, n int, real bool) {
	t.Helper()
	testutil.CheckLeaks(t)
	ns := enterTestNetns(t)
	root, nsDir := testRoot(t), t.TempDir()
	mgr := newManager(t, root, bin, WithNetnsDir(nsDir))
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "netsrc"
	spec.Network = &NetworkSpec{}
	src := start(t, mgr, spec)
	followConsole(t, src).nextTick(t)
	snap, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	guest := src.Info().Network.NICs[0].GuestIP
	ms, err := mgr.Clone(ctx, snap, CloneSpec{Count: n})
	if err != nil {
		t.Fatal(err)
	}
	_, version, err := mgr.Firecracker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	overrides := version.AtLeast(fcapi.SnapshotLoadFieldSince("network_overrides"))
	seen := map[string]bool{}
	for _, m := range ms {
		info := m.Info()
		nw := info.Network
		if nw == nil || nw.Netns == nil || len(nw.NICs) != 1 {
			t.Fatalf("clone %s: network %+v, want one nic in a namespace of its own", m.Name(), nw)
		}
		nic := nw.NICs[0]
		if nic.GuestIP != guest || seen[nw.Netns.Path] {
			t.Errorf("clone %s: guest %v (want the snapshot's %v) in namespace %s (seen before: %v)", m.Name(), nic.GuestIP, guest, nw.Netns.Path, seen[nw.Netns.Path])
		}
		seen[nw.Netns.Path] = true
		if !sameNetns(t, m.PID(), nw.Netns.Path) {
			t.Errorf("clone %s: firecracker is not in its namespace %s", m.Name(), nw.Netns.Path)
		}
		if want := netdev.TAPName(m.Name(), 0); overrides && nic.TAP != want {
			t.Errorf("clone %s: tap %s, want %s (network_overrides)", m.Name(), nic.TAP, want)
		}
		cfg, err := m.Client().GetVMConfig(ctx)
		if err != nil || len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != nic.TAP {
			t.Errorf("clone %s: firecracker has the interfaces %+v (%v), want tap %s", m.Name(), cfg.NetworkInterfaces, err, nic.TAP)
		}
		if err := attachTAP(t, nw.Netns.Path, nic.TAP); real && !errors.Is(err, unix.EBUSY) {
			t.Errorf("clone %s: opening its tap %s while firecracker runs: %v, want EBUSY", m.Name(), nic.TAP, err)
		}
		followConsole(t, m).nextTick(t)
	}
	for _, m := range ms {
		killVM(t, m)
	}
	killVM(t, src)
	ns.checkNetClean(t, root, nsDir)
}

func TestCloneNetworked(t *testing.T) {
	cloneNetworked(t, testutil.Link(t, "firecracker"), 4, false)
}

func TestRealCloneNetworked(t *testing.T) {
	cloneNetworked(t, testutil.FirecrackerBin(t), 4, true)
}

// TestCloneRefusals: bad input gets a clear error before anything starts, or everything
// started is undone, and nothing is left.
func TestCloneRefusals(t *testing.T) {
	ns, mgr, root, nsDir, kernel := netSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "refused"
	spec.Network = &NetworkSpec{Pool: "10.9.0.0/28"} // four /30s
	spec.Drives = []DriveSpec{{ID: "data", Path: kernel}}
	src := start(t, mgr, spec)
	dir := filepath.Join(t.TempDir(), "snap")
	snap, err := src.Snapshot(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cs   CloneSpec
		want error
	}{
		{"count 0", CloneSpec{}, nil},
		{"too many", CloneSpec{Count: MaxClones + 1}, nil},
		{"more than the pool", CloneSpec{Count: 5}, netdev.ErrPoolExhausted},
		{"bad prefix", CloneSpec{Count: 1, NamePrefix: "no/slash"}, nil},
		// The source holds one /30: the fourth clone finds the pool empty, and the three
		// that started are closed.
		{"pool runs out", CloneSpec{Count: 4}, netdev.ErrPoolExhausted},
	} {
		ms, err := mgr.Clone(ctx, snap, tc.cs)
		if err == nil || ms != nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, %v", tc.name, ms, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "refused"}); !errors.Is(err, ErrExists) {
		t.Errorf("restore under a name that is taken: %v", err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "-x"}); err == nil {
		t.Errorf("restore under an invalid name: %v", err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "mmds", MMDSData: []byte(`{}`)}); err == nil {
		t.Errorf("mmds data for a vm without mmds: %v", err)
	}
	older := snap
	older.FirecrackerVersion = "1.6.0"
	if _, err := mgr.Restore(ctx, older, RestoreSpec{Name: "older"}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("another minor release: %v", err)
	}

	// Broken snapshots: each is a copy of the good one with one file spoiled.
	spoil := func(name string, edit func(dir string)) {
		t.Helper()
		bad := filepath.Join(t.TempDir(), "bad")
		if err := os.CopyFS(bad, os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
		edit(bad)
		s, err := OpenSnapshot(bad)
		if err == nil {
			_, err = mgr.Restore(ctx, s, RestoreSpec{Name: "spoiled"})
		}
		if err == nil {
			t.Errorf("%s: restored", name)
		}
		t.Logf("%s: %v", name, err)
		if s.Dir != "" {
			if ms, err := mgr.Clone(ctx, s, CloneSpec{Count: 2, NamePrefix: "spoiled-"}); err == nil {
				t.Errorf("%s: cloned %d", name, len(ms))
			}
		}
	}
	spoil("truncated memory", func(d string) { os.Truncate(filepath.Join(d, "vm.mem"), 4096) })
	spoil("modified state", func(d string) {
		b, _ := os.ReadFile(filepath.Join(d, "vm.state"))
		b[len(b)/2] ^= 1
		os.WriteFile(filepath.Join(d, "vm.state"), b, 0o600)
	})
	spoil("missing drive", func(d string) { os.Remove(filepath.Join(d, "drives", "data.img")) })
	spoil("drive copy of another user", func(d string) { os.Chown(filepath.Join(d, "drives", "data.img"), 65534, 65534) })
	spoil("memory others can write", func(d string) { os.Chmod(filepath.Join(d, "vm.mem"), 0o666) })
	spoil("memory of another user", func(d string) { os.Chown(filepath.Join(d, "vm.mem"), 65534, 65534) })
	spoil("missing memory", func(d string) { os.Remove(filepath.Join(d, "vm.mem")) })

	killVM(t, src)
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left after failed restores: %v", ents)
	}
	ns.checkNetClean(t, root, nsDir)
}
