package smartvm

import (
	"context"
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
	for _, p := range []string{dir, filepath.Join(dir, "smartvm-0000000-x"), ok + "y", other, filepath.Join(dir, "sub", filepath.Base(ok)) + "/../" + filepath.Base(ok)} {
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
	if err := mgr.removeStaging(ok, "x"); err != nil {
		t.Errorf("removeStaging of the vm's staging dir: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another root's staging dir went: %v", err)
	}
}
