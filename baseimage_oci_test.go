package smartvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestBaseImageOCI boots a VM from an OCI image served by an in-process registry: the image
// is converted into a bundle (whose boot args make the agent init) with the given kernel (the
// test guest here), its rootfs is staged as the root drive, and it is in use while the VM
// runs.
func TestBaseImageOCI(t *testing.T) {
	testutil.CheckLeaks(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
	ref, _ := testutil.PushOCIImage(t, "app:1", map[string]string{"etc/os-release": "ID=test\n"}, nil)
	dir := t.TempDir()
	kernel, agent := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "agent")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(agent, []byte("agent"), 0o755)
	images, err := baseimage.New(baseimage.Options{Dir: filepath.Join(dir, "cache"), Kernel: kernel, AgentBinary: agent, RootfsHeadroomMiB: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close() })
	mgr := newManager(t, testRoot(t), testutil.Link(t, "firecracker"), WithBaseImages(images))
	// The test guest stands in for the kernel; it keeps running in counter mode.
	m := start(t, mgr, MachineSpec{BaseImageOCI: ref, MemoryMiB: 32, BootArgs: testguest.BootArgs(testguest.ModeCounter)})
	followConsole(t, m).waitFor(t, testguest.TickLine(0))

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	bundles, err := images.List(ctx)
	if err != nil || len(bundles) != 1 || bundles[0].OCI == nil {
		t.Fatalf("bundles %+v, %v", bundles, err)
	}
	b := bundles[0]
	if len(b.Holders) != 1 || m.Info().BaseImage != b.ID {
		t.Errorf("holders %v, info %+v", b.Holders, m.Info())
	}
	cfg, err := m.Client().GetVMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BootSource.KernelImagePath != b.Kernel || !strings.HasSuffix(b.BootArgs, "init="+baseimage.AgentPath) ||
		len(cfg.Drives) != 1 || !cfg.Drives[0].IsRootDevice || cfg.Drives[0].IsReadOnly {
		t.Errorf("vm config %+v %+v, bundle %+v", cfg.BootSource, cfg.Drives, b)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if hs := holders(t, images); len(hs) != 0 {
		t.Errorf("in-use markers left after stop: %v", hs)
	}
}
