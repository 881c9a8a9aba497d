package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// snapshotAndRestore runs the counter guest with an ephemeral data drive and MMDS data, saves
// it, replaces it with its restored copy, and checks that the copy goes on counting where the
// original was and has its drive and MMDS data back.
func snapshotAndRestore(t *testing.T, mgr *Manager, kernel string, withDevices bool) {
	t.Helper()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "snapme"
	if withDevices {
		data := filepath.Join(t.TempDir(), "data.img")
		if err := os.WriteFile(data, []byte("original"), 0o600); err != nil {
			t.Fatal(err)
		}
		spec.Drives = []DriveSpec{{ID: "data", Path: data}}
		spec.Interfaces = []InterfaceSpec{{TAP: "smvsnap0"}}
		spec.MMDS = &MMDSSpec{Data: json.RawMessage(`{"k":"v"}`)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	orig, err := mgr.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	con := followConsole(t, orig)
	con.nextTick(t)
	dir := filepath.Join(t.TempDir(), "snap")
	snap, err := orig.Snapshot(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := orig.State(ctx); s != StateRunning {
		t.Fatalf("state after snapshot: %v, want it resumed", s)
	}
	if _, err := orig.Snapshot(ctx, dir); !errors.Is(err, ErrExists) {
		t.Errorf("snapshot into a used dir: %v, want ErrExists", err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{}); !errors.Is(err, ErrExists) {
		t.Errorf("restore while the original runs: %v, want ErrExists", err)
	}
	saved := con.nextTick(t)
	if err := orig.Close(); err != nil {
		t.Fatal(err)
	}

	opened, err := OpenSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if opened.Name != "snapme" || opened.Dir != dir || opened.FirecrackerVersion != orig.Info().FirecrackerVersion {
		t.Errorf("opened snapshot %+v", opened)
	}
	m, err := mgr.Restore(ctx, opened, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	restored := followConsole(t, m)
	if n := restored.nextTick(t); n+50 < saved || n > saved+1000 {
		// The snapshot was taken before tick "saved"; the copy counts on from there.
		t.Errorf("restored guest printed tick %d; the original was near %d", n, saved)
	}
	if s, err := m.State(ctx); err != nil || s != StateRunning {
		t.Fatalf("restored state %v, %v", s, err)
	}
	if withDevices {
		var data map[string]string
		if err := m.Client().GetMMDS(ctx, &data); err != nil || data["k"] != "v" {
			t.Errorf("mmds after restore: %v, %v", data, err)
		}
		if b, err := os.ReadFile(filepath.Join(m.Dir(), "drives", "data.img")); err != nil || string(b) != "original" {
			t.Errorf("restaged drive: %q, %v", b, err)
		}
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		t.Errorf("the snapshot went with the vm: %v", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	snapshotAndRestore(t, mgr, kernel, true)
}

func TestRealSnapshotRestore(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	snapshotAndRestore(t, newManager(t, testRoot(t), bin), guestKernel(t), false)
}

func TestSnapshotRefusals(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	ctx := context.Background()
	if _, err := OpenSnapshot(t.TempDir()); !errors.Is(err, ErrNotFound) {
		t.Errorf("open an empty dir: %v", err)
	}
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "snapped"
	spec.Drives = []DriveSpec{{ID: "scratch", Path: kernel}}
	m := start(t, mgr, spec)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	snap, err := m.Snapshot(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := m.State(ctx); s != StatePaused {
		t.Errorf("a paused vm is %v after its snapshot", s)
	}
	m.Kill()
	if _, err := m.Snapshot(ctx, t.TempDir()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("snapshot of an ended vm: %v", err)
	}

	older := snap
	older.FirecrackerVersion = "1.7.0"
	var se *StartError
	if _, err := mgr.Restore(ctx, older, RestoreSpec{}); !errors.As(err, &se) || se.Step != "check the snapshot" || !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("restore with another minor release: %v", err)
	}
	other := newManager(t, filepath.Join(t.TempDir(), "other"), mgr.bin)
	if _, err := other.Restore(ctx, snap, RestoreSpec{}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("restore in another runtime root: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left after failed restores: %v", ents)
	}
	os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"version":9,"name":"x"}`), 0o600)
	if _, err := OpenSnapshot(dir); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("newer manifest: %v", err)
	}
}
