package smartvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// imageFiles writes a base image into dir: the test guest as its kernel, a small ext4 rootfs
// (made with mkfs.ext4 when it is installed) and manifest.json naming them relatively.
func imageFiles(t *testing.T, dir, mode string) (manifest string) {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(rootfs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(rootfs, 4<<20); err != nil {
		t.Fatal(err)
	}
	if mkfs, err := exec.LookPath("mkfs.ext4"); err == nil {
		if out, err := exec.Command(mkfs, "-q", "-F", rootfs).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
	}
	return writeImage(t, dir, mode, rootfs, "ext4")
}

// squashfsImageFiles is imageFiles with a squashfs rootfs, which the base-image manager
// converts to ext4 with an SSH key for root. It skips the test without mksquashfs.
func squashfsImageFiles(t *testing.T, dir, mode string) (manifest string) {
	t.Helper()
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("needs mksquashfs (Debian package squashfs-tools)")
	}
	tree := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(tree, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("testguest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs.squashfs")
	if out, err := exec.Command("mksquashfs", tree, rootfs, "-noappend", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v: %s", err, out)
	}
	return writeImage(t, dir, mode, rootfs, "squashfs")
}

// keyedImage sets up a test of a base image with an SSH key: it checks for leaks, and returns
// a runtime root, the manifest of a squashfs image of the halting test guest and an empty
// base-image cache.
func keyedImage(t *testing.T) (root, manifest string, images *baseimage.Manager) {
	t.Helper()
	testutil.CheckLeaks(t)
	root = testRoot(t)
	manifest = squashfsImageFiles(t, t.TempDir(), testguest.ModeHalt)
	images, err := baseimage.New(baseimage.Options{Dir: filepath.Join(t.TempDir(), "cache")})
	if err != nil {
		t.Fatal(err)
	}
	return root, manifest, images
}

// writeImage writes the test guest as the kernel into dir, and manifest.json naming it and
// rootfs (in dir, of the given format) relatively.
func writeImage(t *testing.T, dir, mode, rootfs, format string) (manifest string) {
	t.Helper()
	kernel := filepath.Join(dir, "vmlinux")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	arch, err := baseimage.HostArch()
	if err != nil {
		t.Skip(err)
	}
	file := func(p string) baseimage.ManifestFile {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		return baseimage.ManifestFile{URL: filepath.Base(p), SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}
	}
	m := baseimage.Manifest{
		Version:  baseimage.ManifestVersion,
		Name:     "testguest-" + mode,
		Arch:     arch,
		Kernel:   file(kernel),
		Rootfs:   file(rootfs),
		BootArgs: testguest.BootArgs(mode),
	}
	m.Rootfs.Format = format
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	manifest = filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return manifest
}

func holders(t *testing.T, images *baseimage.Manager) []string {
	t.Helper()
	bundles, err := images.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var hs []string
	for _, b := range bundles {
		hs = append(hs, b.Holders...)
	}
	return hs
}

// TestBaseImageFromManifestURL boots a base image served by a local HTTP server: the
// bundle's kernel and boot args are used, its rootfs is staged as the ephemeral root drive,
// and the bundle is marked in use while the VM runs.
func TestBaseImageFromManifestURL(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	served := t.TempDir()
	imageFiles(t, served, testguest.ModeCounter)
	srv := httptest.NewServer(http.FileServer(http.Dir(served)))
	t.Cleanup(srv.Close)
	images, err := baseimage.New(baseimage.Options{Dir: filepath.Join(t.TempDir(), "cache"), HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	mgr := newManager(t, root, testutil.Link(t, "firecracker"), WithBaseImages(images))
	m := start(t, mgr, MachineSpec{BaseImageManifestURL: srv.URL + "/manifest.json", MemoryMiB: 32})
	followConsole(t, m).waitFor(t, testguest.TickLine(0))

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	bundles, err := images.List(ctx)
	if err != nil || len(bundles) != 1 {
		t.Fatalf("bundles %v, %v", bundles, err)
	}
	b := bundles[0]
	if len(b.Holders) != 1 || !strings.HasPrefix(b.Holders[0], "vm:"+m.Name()+"@") || m.Info().BaseImage != b.ID {
		t.Errorf("holders %v, info %+v", b.Holders, m.Info())
	}
	cfg, err := m.Client().GetVMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(m.Dir(), "drives", "rootfs.img")
	if cfg.BootSource.KernelImagePath != b.Kernel || cfg.BootSource.BootArgs != b.BootArgs ||
		len(cfg.Drives) != 1 || cfg.Drives[0].PathOnHost != staged || !cfg.Drives[0].IsRootDevice || cfg.Drives[0].IsReadOnly {
		t.Errorf("vm config %+v %+v, bundle %+v", cfg.BootSource, cfg.Drives, b)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if hs := holders(t, images); len(hs) != 0 {
		t.Errorf("in-use markers left after stop: %v", hs)
	}
	if _, err := os.Stat(b.Rootfs); err != nil {
		t.Errorf("the cached rootfs went with the vm: %v", err)
	}
}

// TestBaseImageMarkerReaped kills the owner of a base-image VM with SIGKILL: the next
// manager with the base-image manager reaps the VM and drops its in-use marker.
func TestBaseImageMarkerReaped(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	manifest := imageFiles(t, t.TempDir(), testguest.ModeHalt)
	cache := filepath.Join(t.TempDir(), "cache")
	bin := testutil.Link(t, "firecracker")
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, ImageDir: cache,
		Spec: MachineSpec{BaseImageManifestPath: manifest, MemoryMiB: 32}})
	killOwner(t, owner)
	if !processGone(pid, time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("firecracker outlived its owner")
	}
	images, err := baseimage.New(baseimage.Options{Dir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if hs := holders(t, images); len(hs) != 1 {
		t.Fatalf("holders before reaping: %v", hs)
	}
	newManager(t, root, bin, WithBaseImages(images))
	if hs := holders(t, images); len(hs) != 0 {
		t.Fatalf("holders after reaping: %v", hs)
	}
}

// TestBaseImageSSHKey boots a base image whose rootfs was converted with an SSH key for root:
// Info, List and an attached Machine name the bundle's private key.
func TestBaseImageSSHKey(t *testing.T) {
	root, manifest, images := keyedImage(t)
	ctx := context.Background()
	b, err := images.Pull(ctx, baseimage.Source{ManifestPath: manifest})
	if err != nil {
		t.Fatal(err)
	}
	if b.SSHPrivateKey == "" {
		t.Fatal("the converted bundle has no SSH key")
	}
	mgr := newManager(t, root, testutil.Link(t, "firecracker"), WithBaseImages(images))
	m := start(t, mgr, MachineSpec{BaseImageManifestPath: manifest, MemoryMiB: 32})
	if got := m.Info().SSHKey; got != b.SSHPrivateKey {
		t.Errorf("Info().SSHKey = %q, want %q", got, b.SSHPrivateKey)
	}
	infos, err := mgr.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].SSHKey != b.SSHPrivateKey {
		t.Errorf("list %+v, %v", infos, err)
	}
	// Another manager on the root sees it in state.json.
	other := newManager(t, root, testutil.Link(t, "firecracker"), WithBaseImages(images))
	am, err := other.Attach(ctx, m.Name())
	if err != nil {
		t.Fatal(err)
	}
	if got := am.Info().SSHKey; got != b.SSHPrivateKey {
		t.Errorf("attached Info().SSHKey = %q", got)
	}
	if err := am.Release(); err != nil {
		t.Fatal(err)
	}
	// A key path in state.json is data: one that is not the cache's key for the image is
	// never handed out.
	stPath := filepath.Join(m.Dir(), "state.json")
	st, _ := os.ReadFile(stPath)
	os.WriteFile(stPath, bytes.ReplaceAll(st, []byte(b.SSHPrivateKey), []byte("/etc/shadow")), 0o600)
	if infos, err := other.List(ctx); err != nil || len(infos) != 1 || infos[0].SSHKey != "" {
		t.Errorf("a forged key path was listed: %+v, %v", infos, err)
	}
}

// A VM started from a base image and restored from its snapshot holds the image in use again
// and has its SSH key, so smartvm ssh works on it.
func TestRestoredBaseImageVMKeepsItsKey(t *testing.T) {
	root, manifest, images := keyedImage(t)
	ctx := context.Background()
	mgr := newManager(t, root, testutil.Link(t, "firecracker"), WithBaseImages(images))
	m := start(t, mgr, MachineSpec{Name: "imaged", BaseImageManifestPath: manifest, MemoryMiB: 32})
	want := m.Info()
	if want.SSHKey == "" || want.BaseImage == "" {
		t.Fatalf("the started vm has no key or image: %+v", want)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := m.Snapshot(ctx, dir); err != nil {
		t.Fatal(err)
	}
	m.Kill()
	wait(t, m)
	m.Close()
	snap, err := OpenSnapshot(dir)
	if err != nil || snap.BaseImage != want.BaseImage {
		t.Fatalf("snapshot base image %q, %v; want %q", snap.BaseImage, err, want.BaseImage)
	}
	r, err := mgr.Restore(ctx, snap, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Info(); got.SSHKey != want.SSHKey || got.BaseImage != want.BaseImage {
		t.Errorf("restored vm: key %q image %q; want %q %q", got.SSHKey, got.BaseImage, want.SSHKey, want.BaseImage)
	}
	if infos, _ := mgr.List(ctx); len(infos) != 1 || infos[0].SSHKey != want.SSHKey {
		t.Errorf("listed: %+v", infos)
	}
	b, err := images.Get(ctx, want.BaseImage)
	if err != nil || len(b.Holders) != 1 {
		t.Errorf("the restored vm does not hold its image: %+v, %v", b, err)
	}
	r.Kill()
	wait(t, r)
	r.Close()
	if b, _ := images.Get(ctx, want.BaseImage); b == nil || len(b.Holders) != 0 {
		t.Errorf("the image is still held after the vm ended: %+v", b)
	}
}
