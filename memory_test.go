package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// snapshotCounter runs the counter guest until its first tick, snapshots it into a fresh
// directory, and closes it.
func snapshotCounter(t *testing.T, mgr *Manager, kernel, name string, edit func(*MachineSpec)) Snapshot {
	t.Helper()
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = name
	if edit != nil {
		edit(&spec)
	}
	m := start(t, mgr, spec)
	followConsole(t, m).nextTick(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return snap
}

// twinSnapshot returns a copy of snap under another VM name whose memory file is a hard
// link to snap's: the same memory file, so the same page server.
func twinSnapshot(t *testing.T, snap Snapshot, name string) Snapshot {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "twin")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(snap.Dir, snapshotMemory), filepath.Join(dir, snapshotMemory)); err != nil {
		t.Fatal(err)
	}
	st, err := os.ReadFile(filepath.Join(snap.Dir, snapshotState))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshotState), st, 0o600); err != nil {
		t.Fatal(err)
	}
	twin := snap
	twin.Name, twin.Dir = name, dir
	b, _ := json.Marshal(twin)
	if err := os.WriteFile(filepath.Join(dir, snapshotManifest), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return twin
}

// pageServerState returns the number of page servers and the references to each.
func pageServerState(mgr *Manager) (servers int, refs []int) {
	mgr.pages.mu.Lock()
	defer mgr.pages.mu.Unlock()
	for _, p := range mgr.pages.files {
		refs = append(refs, p.refs)
	}
	return len(mgr.pages.files), refs
}

// uffdRestores restores snap and a twin of it with MemoryUffd: one page server serves both
// while they run, the guests count on (checkTicks), and the server ends with the last VM.
func uffdRestores(t *testing.T, mgr *Manager, snap Snapshot, checkTicks bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	a, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := os.Lstat(filepath.Join(a.Dir(), uffdSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the uffd socket is left after the restore: %v", err)
	}
	b, err := mgr.Restore(ctx, twinSnapshot(t, snap, "twin"), RestoreSpec{}, WithMemoryBackend(MemoryUffd))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n, refs := pageServerState(mgr); n != 1 || refs[0] != 2 {
		t.Fatalf("%d page servers, refs %v: want one serving both VMs", n, refs)
	}
	mgr.pages.mu.Lock()
	clients := mgr.pages.vms[a.Name()].srv.Clients()
	mgr.pages.mu.Unlock()
	if clients != 2 {
		t.Errorf("the page server serves %d firecrackers, want 2", clients)
	}
	if checkTicks {
		for _, m := range []*Machine{a, b} {
			con := followConsole(t, m)
			if x, y := con.nextTick(t), con.nextTick(t); y <= x {
				t.Errorf("vm %s: tick %d after %d", m.Name(), y, x)
			}
		}
	}
	ws, err := a.WorkingSet()
	if err != nil || (checkTicks && len(ws) == 0) {
		t.Errorf("working set: %d pages, %v", len(ws), err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, a)
	if n, refs := pageServerState(mgr); n != 1 || refs[0] != 1 {
		t.Errorf("after one VM ended: %d page servers, refs %v", n, refs)
	}
	if _, err := a.WorkingSet(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("working set of an ended vm: %v", err)
	}
	b.Kill()
	wait(t, b)
	if n, _ := pageServerState(mgr); n != 0 {
		t.Errorf("%d page servers left after the last VM ended", n)
	}

	if !checkTicks {
		return
	}
	// A restore prefaulted with the working set counts on too.
	c, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd), WithPrefault(ws))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	con := followConsole(t, c)
	if x, y := con.nextTick(t), con.nextTick(t); y <= x {
		t.Errorf("prefaulted vm: tick %d after %d", y, x)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	wait(t, c)
	if n, _ := pageServerState(mgr); n != 0 {
		t.Errorf("%d page servers left", n)
	}
}

func TestRestoreUffd(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	snap := snapshotCounter(t, mgr, kernel, "uffd", nil)
	uffdRestores(t, mgr, snap, false)

	ctx := context.Background()
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd), Detached()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("detached uffd restore: %v, want ErrUnsupported", err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend("Swap")); err == nil {
		t.Error("an unknown memory backend was taken")
	}
	if n, _ := pageServerState(mgr); n != 0 {
		t.Errorf("%d page servers left after failed restores", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left after failed restores: %v", ents)
	}
}

func TestRealRestoreUffd(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	mgr := newManager(t, testRoot(t), bin)
	kernel := guestKernel(t)
	snap := snapshotCounter(t, mgr, kernel, "uffd", nil)
	if v, _ := fcapi.ParseVersion(snap.FirecrackerVersion); !v.AtLeast(fcapi.Version{Major: 1, Minor: 8}) {
		// v1.7's userfaultfd crate refuses the ioctl flags of newer kernels (this host's
		// 6.x): the restore fails in Firecracker, and must leave nothing behind.
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if _, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd)); !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "restore with File") {
			t.Fatalf("uffd restore with firecracker %s: %v, want ErrUnsupported saying to use File", snap.FirecrackerVersion, err)
		}
		if n, _ := pageServerState(mgr); n != 0 {
			t.Errorf("%d page servers left after a failed restore", n)
		}
		return
	}
	uffdRestores(t, mgr, snap, true)
}
