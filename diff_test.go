package smartvm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/memfile"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// takeDiffChain takes a full snapshot of the counter guest, then two diffs, each over the one
// before, while the guest counts on, and a full snapshot ref of the guest as d2 saw it; it
// returns the snapshots and the tick seen last.
func takeDiffChain(t *testing.T, mgr *Manager, kernel string) (full, d1, d2, ref Snapshot, last uint64) {
	t.Helper()
	return takeDiffChainOf(t, mgr, guestSpec(kernel, testguest.ModeCounter))
}

// takeDiffChainOf is takeDiffChain for spec, a counter guest.
func takeDiffChainOf(t *testing.T, mgr *Manager, spec MachineSpec) (full, d1, d2, ref Snapshot, last uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	spec.Name = "diffs"
	spec.TrackDirtyPages = true
	m := start(t, mgr, spec)
	defer m.Close()
	con := followConsole(t, m)
	con.nextTick(t)
	var err error
	if full, err = m.Snapshot(ctx, filepath.Join(t.TempDir(), "full")); err != nil {
		t.Fatal(err)
	}
	con.nextTick(t)
	if d1, err = m.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "d1"), full); err != nil {
		t.Fatal(err)
	}
	// Bases are told apart by their memory's content: the fake's guests leave it all
	// zeros, so only a real guest's snapshots differ.
	if _, err := m.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "stale"), full); (err == nil || !strings.Contains(err.Error(), "last snapshot")) && full.Memory.SHA256 != d1.Memory.SHA256 {
		t.Errorf("diff over a snapshot older than the last: %v", err)
	}
	con.nextTick(t)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if d2, err = m.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "d2"), d1); err != nil {
		t.Fatal(err)
	}
	if ref, err = m.Snapshot(ctx, filepath.Join(t.TempDir(), "ref")); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	last = con.nextTick(t)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wait(t, m)
	if full.Memory.Type != MemoryFull || d1.Memory.Type != MemoryDiff || d2.Memory.Base.Dir != d1.Dir || d2.Memory.Base.SHA256 != d1.Memory.SHA256 {
		t.Fatalf("memory records: full %+v, d1 %+v, d2 %+v", full.Memory, d1.Memory, d2.Memory)
	}
	return full, d1, d2, ref, last
}

// restoreDiff restores the diff snap, checks that its merged memory is that of ref (when
// set), that it counts on from near last (checkTicks), and stops it.
func restoreDiff(t *testing.T, mgr *Manager, snap Snapshot, ref *Snapshot, last uint64, checkTicks bool, opts ...StartOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	opened, err := OpenSnapshot(snap.Dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mgr.Restore(ctx, opened, RestoreSpec{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mergedPath := filepath.Join(m.Dir(), mergedMemory)
	m.mgr.pages.mu.Lock()
	served := m.mgr.pages.vms[m.Name()] != nil // MemoryUffd: the memory stays on the host
	m.mgr.pages.mu.Unlock()
	if snap.Spec.Jailer != nil && !served {
		mergedPath = mergedInJail(t, m)
	}
	merged, err := os.ReadFile(mergedPath)
	if err != nil {
		t.Errorf("no merged memory at %s: %v", mergedPath, err)
	}
	if ref != nil {
		want, err := os.ReadFile(filepath.Join(ref.Dir, snapshotMemory))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(merged, want) {
			t.Errorf("the merged chain (%d bytes) differs from a full snapshot of the same moment (%d bytes)", len(merged), len(want))
		}
	}
	if checkTicks {
		con := followConsole(t, m)
		if n := con.nextTick(t); n+50 < last || n > last+1000 {
			t.Errorf("restored diff printed tick %d; the original was near %d", n, last)
		}
		if x, y := con.nextTick(t), con.nextTick(t); y <= x {
			t.Errorf("tick %d after %d", y, x)
		}
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, m)
}

func TestDiffSnapshots(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	full, d1, d2, ref, last := takeDiffChain(t, mgr, kernel)
	restoreDiff(t, mgr, d2, &ref, last, false)
	restoreDiff(t, mgr, d2, &ref, last, false, WithMemoryBackend(MemoryUffd))
	restoreDiff(t, mgr, d1, nil, last, false)
	ctx := context.Background()

	// A VM restored from a diff takes a diff over it; a VM that took no snapshot yet has
	// no base.
	r, err := mgr.Restore(ctx, d2, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	other := full
	other.Memory = &SnapshotMemory{Type: MemoryFull, Size: full.Memory.Size, SHA256: strings.Repeat("0", 64)}
	if _, err := r.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "x"), other); err == nil || !strings.Contains(err.Error(), "last snapshot") {
		t.Errorf("diff of a restored vm over the base of its snapshot: %v", err)
	}
	d3, err := r.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "d3"), d2)
	if err != nil {
		t.Fatal(err)
	}
	r.Kill()
	wait(t, r)
	restoreDiff(t, mgr, d3, nil, last, false)
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.TrackDirtyPages = true
	fresh := start(t, mgr, spec)
	if _, err := fresh.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "x"), full); err == nil || !strings.Contains(err.Error(), "no snapshot known") {
		t.Errorf("diff of a vm that took no snapshot: %v", err)
	}
	fresh.Kill()
	wait(t, fresh)

	// A VM without dirty-page tracking takes no diff.
	m := start(t, mgr, guestSpec(kernel, testguest.ModeHalt))
	if _, err := m.SnapshotDiff(ctx, filepath.Join(t.TempDir(), "x"), full); !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "track") {
		t.Errorf("diff of an untracked vm: %v", err)
	}
	m.Kill()
	wait(t, m)

	refused := func(what string, snap Snapshot, want string) {
		t.Helper()
		_, err := mgr.Restore(ctx, snap, RestoreSpec{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", what, err, want)
		}
		if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
			t.Errorf("%s: left %v", what, ents)
		}
	}
	// The base changed: a byte of the full snapshot's memory.
	mem := filepath.Join(full.Dir, snapshotMemory)
	orig, err := os.ReadFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	changed := append([]byte(nil), orig...)
	changed[4096] ^= 1
	os.WriteFile(mem, changed, 0o600)
	refused("changed base", d2, "changed since")
	os.WriteFile(mem, orig, 0o600)
	// A middle diff is missing.
	moved := d1.Dir + ".moved"
	if err := os.Rename(d1.Dir, moved); err != nil {
		t.Fatal(err)
	}
	refused("missing base", d2, "chain is broken")
	os.Rename(moved, d1.Dir)
	// A diff without its base.
	noBase := d2
	noBase.Memory = &SnapshotMemory{Type: MemoryDiff, Size: d2.Memory.Size, SHA256: d2.Memory.SHA256}
	refused("diff without base", noBase, "names no base")
	restoreDiff(t, mgr, d2, &ref, last, false) // the chain is whole again

	// OpenSnapshot refuses a manifest whose diff has no base.
	b, _ := os.ReadFile(filepath.Join(d2.Dir, snapshotManifest))
	s := strings.Replace(string(b), `"base":`, `"nobase":`, 1)
	os.WriteFile(filepath.Join(d2.Dir, snapshotManifest), []byte(s), 0o600)
	if _, err := OpenSnapshot(d2.Dir); err == nil || !strings.Contains(err.Error(), "without its base") {
		t.Errorf("open a diff without its base: %v", err)
	}
}

func TestRealDiffSnapshots(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	mgr := newManager(t, testRoot(t), bin)
	_, d1, d2, ref, last := takeDiffChain(t, mgr, guestKernel(t))
	for _, d := range []Snapshot{d1, d2} {
		f, err := os.Open(filepath.Join(d.Dir, snapshotMemory))
		if err != nil {
			t.Fatal(err)
		}
		ext, err := memfile.Extents(f, d.Memory.Size)
		f.Close()
		if err != nil || len(ext) == 0 {
			t.Errorf("diff %s holds no pages (%v): the test would not show the merge", d.Dir, err)
		}
	}
	restoreDiff(t, mgr, d2, &ref, last, true)
	if v, _ := fcapi.ParseVersion(d2.FirecrackerVersion); v.AtLeast(fcapi.Version{Major: 1, Minor: 8}) {
		// The merged memory served by the page server (v1.7 has no usable Uffd here).
		restoreDiff(t, mgr, d2, &ref, last, true, WithMemoryBackend(MemoryUffd))
	}
}

// mergedInJail returns the memory a jailed restore of a diff merged, in m's chroot (the
// grandparent of <chroot>/run/api.sock), and checks that it is the jail's uid's, mode 0600,
// and that the VM's directory holds no merge of its own.
func mergedInJail(t *testing.T, m *Machine) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(filepath.Dir(m.APISocket())), jailMergedMemory)
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil || st.Uid == 0 || st.Mode&0o777 != 0o600 {
		t.Errorf("merged memory %s: uid %d mode %o, %v; want the jail's uid and 0600", p, st.Uid, st.Mode&0o777, err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir(), mergedMemory)); !os.IsNotExist(err) {
		t.Errorf("a jailed restore merged into the vm's directory too: %v", err)
	}
	return p
}
