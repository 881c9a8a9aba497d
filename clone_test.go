package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// cloneRunning snapshots a running counter guest that has an ephemeral drive and a vsock
// device (and, withMMDS, MMDS data), restores it under a new name, and starts n clones of it,
// all while the original keeps running: every copy counts on from the snapshot, has its own
// drive, vsock socket and identity, and nothing is left once they stop.
func cloneRunning(t *testing.T, mgr *Manager, root, kernel string, n int, withMMDS bool) {
	t.Helper()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "src"
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, []byte("original"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	spec.Vsock = &VsockSpec{CID: 3}
	if withMMDS {
		spec.Interfaces = []InterfaceSpec{{TAP: "smvclone0"}}
		spec.MMDS = &MMDSSpec{Data: json.RawMessage(`{"k":"v"}`)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	src, err := mgr.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srcCon := followConsole(t, src)
	srcCon.nextTick(t)
	snap, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	saved := srcCon.nextTick(t)
	if snap.Memory == nil || snap.Memory.Type != MemoryFull || snap.Memory.Size != 32<<20 || len(snap.StateSHA256) != 64 {
		t.Errorf("manifest: memory %+v, state sha256 %q", snap.Memory, snap.StateSHA256)
	}

	one, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := mgr.Clone(ctx, snap, CloneSpec{Count: n, NamePrefix: "c-"})
	if err != nil {
		one.Close()
		t.Fatal(err)
	}
	ms = append([]*Machine{one}, ms...)
	defer func() {
		for _, m := range ms {
			m.Close()
		}
	}()
	for i, m := range ms {
		want := "copy"
		if i > 0 {
			want = "c-" + strconv.Itoa(i)
		}
		if m.Name() != want {
			t.Errorf("vm %d is called %s, want %s", i, m.Name(), want)
		}
		if tick := followConsole(t, m).nextTick(t); tick+50 < saved || tick > saved+5000 {
			t.Errorf("vm %s printed tick %d; the snapshot was taken near %d", m.Name(), tick, saved)
		}
		info := m.Info()
		if info.RestoredFrom != snap.Dir || !info.SnapshotTaken.Equal(snap.Created) {
			t.Errorf("vm %s: restored from %q at %v, want %q at %v", m.Name(), info.RestoredFrom, info.SnapshotTaken, snap.Dir, snap.Created)
		}
		if info.VsockSocket != filepath.Join(m.Dir(), "vsock.sock") {
			t.Errorf("vm %s: vsock socket %s", m.Name(), info.VsockSocket)
		} else if fi, err := os.Lstat(info.VsockSocket); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("vm %s: its vsock socket: %v, %v", m.Name(), fi, err)
		}
		drive := filepath.Join(m.Dir(), "drives", "data.img")
		if b, err := os.ReadFile(drive); err != nil || string(b) != "original" {
			t.Errorf("vm %s: its drive: %q, %v", m.Name(), b, err)
		}
		if withMMDS {
			var md struct {
				K       string            `json:"k"`
				SmartVM map[string]string `json:"smartvm"`
			}
			if err := m.Client().GetMMDS(ctx, &md); err != nil || md.K != "v" || md.SmartVM["name"] != m.Name() {
				t.Errorf("vm %s: mmds %+v, %v", m.Name(), md, err)
			}
		}
	}
	// Each copy writes its own drive: a write to one shows in no other.
	if err := os.WriteFile(filepath.Join(ms[0].Dir(), "drives", "data.img"), []byte("changed!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(ms[1].Dir(), "drives", "data.img")); string(b) != "original" {
		t.Errorf("a write to one clone's drive shows in another's: %q", b)
	}
	if tick := srcCon.nextTick(t); tick <= saved {
		t.Errorf("the source printed tick %d after its clones started, and %d before", tick, saved)
	}
	if s, err := src.State(ctx); err != nil || s != StateRunning {
		t.Errorf("source: %v, %v", s, err)
	}
	errs := make(chan error, len(ms))
	for _, m := range ms {
		go func() { errs <- m.Stop(ctx) }()
	}
	for range ms {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, m := range ms {
		m.Close()
	}
	srcCon.nextTick(t) // the source still runs
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, append(ms, src))
}

func TestCloneRunning(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	cloneRunning(t, mgr, root, kernel, 5, true)
}

func TestRealCloneRunning(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	cloneRunning(t, newManager(t, root, bin), root, guestKernel(t), 20, false)
}

// TestCloneVsockPath: a vsock socket outside the VM's directory moves to a clone's own only
// with vsock_override (v1.16+); an older release is refused by name, leaving nothing.
func TestCloneVsockPath(t *testing.T) {
	for _, tc := range []struct {
		version string
		ok      bool
	}{{"1.14.2", false}, {"1.16.1", true}} {
		t.Run(tc.version, func(t *testing.T) {
			t.Setenv(fakefc.EnvVersion, tc.version)
			mgr, root, kernel := fakeSetup(t)
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			spec := guestSpec(kernel, testguest.ModeCounter)
			spec.Name = "vsrc"
			spec.Vsock = &VsockSpec{CID: 3, Path: filepath.Join(t.TempDir(), "src.sock")}
			src := start(t, mgr, spec)
			defer src.Close()
			snap, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
			if err != nil {
				t.Fatal(err)
			}
			own := filepath.Join(t.TempDir(), "clone.sock")
			m, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "vclone", VsockPath: own})
			if !tc.ok {
				var ue *fcapi.UnsupportedError
				if !errors.As(err, &ue) || ue.Since.Minor != 16 {
					t.Fatalf("restore under another name on %s: %v, want it refused naming v1.16", tc.version, err)
				}
				t.Log(err)
				if _, err := os.Stat(own); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("socket left: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Info().VsockSocket; got != own {
				t.Errorf("clone's vsock socket %s, want %s", got, own)
			}
			if fi, err := os.Lstat(own); err != nil || fi.Mode().Type() != os.ModeSocket {
				t.Errorf("clone's socket: %v, %v", fi, err)
			}
			followConsole(t, m).nextTick(t)
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(own); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left after the clone ended: %v", err)
			}
			src.Close()
			checkGone(t, root, []*Machine{m, src})
		})
	}
}

// restoreRenamed snapshots a counter guest with an ephemeral drive and a vsock device, ends
// it, and restores it under a new name: Firecracker finds the drive and the socket the
// snapshot names although the source's directory is gone, and the copy counts on.
func restoreRenamed(t *testing.T, mgr *Manager, root, kernel string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "before"
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, []byte("original"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	spec.Vsock = &VsockSpec{CID: 3}
	src := start(t, mgr, spec)
	con := followConsole(t, src)
	con.nextTick(t)
	snap, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	saved := con.nextTick(t)
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "after"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if tick := followConsole(t, m).nextTick(t); tick+50 < saved || tick > saved+5000 {
		t.Errorf("restored guest printed tick %d; the snapshot was taken near %d", tick, saved)
	}
	if _, err := os.Stat(filepath.Join(root, "vms", "before")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the source's directory is back in the host's view: %v", err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, []*Machine{src, m})
}

func TestRestoreRenamed(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	restoreRenamed(t, mgr, root, kernel)
}

func TestRealRestoreRenamed(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	restoreRenamed(t, newManager(t, root, bin), root, guestKernel(t))
}

// TestSnapshotFailureLeavesNothing: a snapshot that fails after Firecracker wrote its files
// (here, copying a drive) removes everything it wrote, the directory it made included, and
// the VM runs on.
func TestSnapshotFailureLeavesNothing(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Drives = []DriveSpec{{ID: "data", Path: kernel}}
	m := start(t, mgr, spec)
	defer m.Close()
	if err := os.Remove(filepath.Join(m.Dir(), "drives", "data.img")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	_, err := m.Snapshot(ctx, dir)
	if err == nil {
		t.Fatal("snapshot without the staged drive succeeded")
	}
	t.Log(err)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed snapshot left %s: %v", dir, err)
	}
	if s, err := m.State(ctx); err != nil || s != StateRunning {
		t.Errorf("after the failed snapshot the vm is %v, %v", s, err)
	}
}
