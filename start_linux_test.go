package smartvm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestStartStagingFails: a drive that does not fit in the runtime root's filesystem fails
// Start at the staging step, and everything done before is undone.
func TestStartStagingFails(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	small := t.TempDir()
	if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(small, 0) })
	root := filepath.Join(small, "rt")
	t.Cleanup(func() { testutil.NoFilesUnder(t, filepath.Join(root, "vms")) })
	mgr := newManager(t, root, testutil.Link(t, "firecracker"))
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, bytes.Repeat([]byte("x"), 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Drives = []DriveSpec{{Path: data}}
	_, err := mgr.Start(context.Background(), spec)
	var se *StartError
	if !errors.As(err, &se) || se.Step != "stage drives" || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("start with a drive larger than the root's filesystem: %v, want a StartError at staging wrapping ENOSPC", err)
	}
}
