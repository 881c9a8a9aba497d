package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
)

// With WithStagingDir, ephemeral drives are staged under it, Info reports where and how much,
// and the copies go with the VM: when it stops, and when a later manager reaps it.
func TestStagingDir(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	mgr, root, kernel := fakeSetup(t, WithStagingDir(staging))
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, []byte(strings.Repeat("d", 64<<10)), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "staged"
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	m := start(t, mgr, spec)
	info := m.Info()
	if filepath.Dir(info.StagingDir) != staging || !strings.HasSuffix(info.StagingDir, "-staged") {
		t.Errorf("staging dir %s, want one under %s", info.StagingDir, staging)
	}
	if _, err := os.Stat(filepath.Join(info.StagingDir, "data.img")); err != nil {
		t.Errorf("staged drive: %v", err)
	}
	if info.StagedBytes < 64<<10 {
		t.Errorf("staged bytes %d, want at least the drive's 64 KiB of data", info.StagedBytes)
	}
	list, err := mgr.List(context.Background())
	if err != nil || len(list) != 1 || list[0].StagingDir != info.StagingDir || list[0].StagedBytes != info.StagedBytes {
		t.Errorf("List: %+v, %v", list, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(info.StagingDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging dir left after stop: %v", err)
	}

	// A detached VM whose process dies is reaped with its staging dir.
	m, err = mgr.Start(ctx, spec, Detached())
	if err != nil {
		t.Fatal(err)
	}
	pid := m.PID()
	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !processGone(pid, waitLong) {
		t.Fatal("firecracker did not die")
	}
	other := newManager(t, root, mgr.bin, WithStagingDir(staging))
	if _, err := other.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(staging); len(ents) != 0 {
		t.Errorf("staging root holds %d entries after the reap", len(ents))
	}
}

func TestRemoveStagingRefusesOtherPaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mgr := newManager(t, testRoot(t), "/bin/true", WithStagingDir(dir))
	ok := mgr.paths("x").Drives
	other := newManager(t, testRoot(t), "/bin/true", WithStagingDir(dir)).paths("x").Drives
	elsewhere := filepath.Join(t.TempDir(), filepath.Base(ok)) // the right name in another directory
	for _, p := range []string{dir, filepath.Join(dir, "smartvm-0000000-x"), ok + "y", other, filepath.Join(dir, "sub", filepath.Base(ok)) + "/../" + filepath.Base(ok), elsewhere} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := mgr.removeStaging(p, "x"); err == nil {
			t.Errorf("removeStaging(%s, x) removed it", p)
		}
	}
	if err := os.Mkdir(ok, 0o700); err != nil {
		t.Fatal(err)
	}
	// A manager without a staging root takes no recorded directory for one.
	if err := newManager(t, testRoot(t), "/bin/true").removeStaging(ok, "x"); err == nil || !strings.Contains(err.Error(), "no staging root") {
		t.Errorf("removeStaging without a staging root: %v", err)
	}
	if err := mgr.removeStaging(ok, "x"); err != nil {
		t.Errorf("removeStaging of the vm's staging dir: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another root's staging dir went: %v", err)
	}
}

// A staging_dir in state.json that is not exactly the VM's staging directory under this
// manager's staging root is left alone when the VM is reaped, even with the right last
// element, and is not reported as the VM's.
func TestForgedStagingDirIsLeftAlone(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	mgr, _, kernel := fakeSetup(t, WithStagingDir(staging))
	ctx := context.Background()
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "forged"
	m := start(t, mgr, spec, Detached())
	pid := m.PID()
	real := m.Info().StagingDir
	m.Release()
	victim := filepath.Join(t.TempDir(), filepath.Base(real))
	if err := os.Mkdir(victim, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(victim, "keep"), []byte("keep"), 0o600)
	stPath := filepath.Join(m.Dir(), "state.json")
	var st map[string]any
	b, _ := os.ReadFile(stPath)
	json.Unmarshal(b, &st)
	if st["staging_dir"] != real {
		t.Fatalf("state.json records staging_dir %v, want %s", st["staging_dir"], real)
	}
	st["staging_dir"] = victim
	b, _ = json.Marshal(st)
	os.WriteFile(stPath, b, 0o600)
	// Neither the forged directory nor one that does not hold the VM's drives is reported.
	if infos, err := mgr.List(ctx); err != nil || len(infos) != 1 || infos[0].StagingDir != "" || infos[0].StagedBytes != 0 {
		t.Errorf("List: %+v %v: want no staging dir reported", infos, err)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if !processGone(pid, waitLong) {
		t.Fatal("firecracker did not die")
	}
	_, err := mgr.Reap(ctx)
	if err == nil || !strings.Contains(err.Error(), "left alone") || !strings.Contains(err.Error(), real) {
		t.Errorf("reap: %v, want the forged staging dir reported with the one expected", err)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "keep")); err != nil || string(b) != "keep" {
		t.Errorf("the victim was touched: %q %v", b, err)
	}
	// Once the record names the real one, the VM and its staging directory go.
	st["staging_dir"] = real
	b, _ = json.Marshal(st)
	os.WriteFile(stPath, b, 0o600)
	if names, err := mgr.Reap(ctx); err != nil || len(names) != 1 {
		t.Errorf("reap after fixing the record: %v %v", names, err)
	}
	if _, err := os.Stat(real); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging dir left after the reap: %v", err)
	}
}

// A VM attached by a manager without the staging root it was started with cannot be
// snapshotted there (the manager does not take its recorded staging directory for one): the
// snapshot is refused before the VM is paused, saying which staging directory to give.
func TestSnapshotAttachedOtherStagingRoot(t *testing.T) {
	staging := filepath.Join(t.TempDir(), "staging")
	mgr, root, kernel := fakeSetup(t, WithStagingDir(staging))
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "staged-snap"
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	m := start(t, mgr, spec, Detached())
	stagingDir := m.Info().StagingDir
	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for _, other := range []*Manager{newManager(t, root, mgr.bin), newManager(t, root, mgr.bin, WithStagingDir(t.TempDir()))} {
		am, err := other.Attach(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "snap")
		_, err = am.Snapshot(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), stagingDir) || !strings.Contains(err.Error(), "WithStagingDir") {
			t.Errorf("Snapshot: %v; want a refusal naming %s and how to give it", err, stagingDir)
		}
		if st, err := am.State(ctx); err != nil || st != StateRunning {
			t.Errorf("after the refused snapshot the vm is %s (%v), want running", st, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused snapshot left %s: %v", dir, err)
		}
		am.Release()
	}
	am, err := mgr.Attach(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(am.Kill(), am.Close()); err != nil {
		t.Fatal(err)
	}
}
