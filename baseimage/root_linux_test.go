package baseimage

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// smallTmpfs mounts a tmpfs of size (mount's size= option) for the test, or skips it.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// assertTmpfsFreed fails the test unless the tmpfs at dir is about empty again.
func assertTmpfsFreed(t *testing.T, dir string) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if used := (st.Blocks - st.Bfree) * uint64(st.Bsize); used > 64<<10 {
		t.Errorf("%d bytes still used on the tmpfs after the failed pull", used)
	}
}

// TestPullDiskFull pulls into a cache on a 1 MiB tmpfs: the download fails with ENOSPC, the
// partial files are removed and nothing is cached.
func TestPullDiskFull(t *testing.T) {
	dir := smallTmpfs(t, "1m")
	bucket := newFakeBucket(t)
	url, _ := hostExt4(t, bucket, "big", 3<<20)
	m := testManager(t, bucket, func(o *Options) { o.Dir = filepath.Join(dir, "cache") })
	defer m.Close() // before the unmount
	_, err := m.Pull(context.Background(), Source{ManifestURL: url})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pull onto a full disk: %v, want ENOSPC", err)
	}
	assertNothingCached(t, m)
	assertTmpfsFreed(t, dir)
}

// TestConvertWithoutRoot converts the test squashfs as an unprivileged user (the test binary
// re-executed as nobody) and checks that owners, modes, set-id bits and device nodes come out
// as they do for root.
func TestConvertWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user (the non-root path itself runs whenever the tests do)")
	}
	needConvertTools(t)
	sq := testSquashfs(t)
	dir, err := os.MkdirTemp("", "baseimage-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	const nobody = 65534
	key, err := newSSHKey()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "baseimage.test")
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"rootfs.squashfs", sq, 0o644}, {"key.pub", key.authorizedKey, 0o644}, {"key", key.privatePEM, 0o600}, {"agent", []byte("agent bytes"), 0o644}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := copyFile(self, bin); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	os.Chown(dir, nobody, nobody)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"=convert", envHelperDir+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("convert as nobody: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "work")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the work dir was not removed: %v", err)
	}
	checkBootReady(t, &Bundle{Rootfs: filepath.Join(dir, "rootfs.ext4"), SSHPublicKey: filepath.Join(dir, "key.pub"), SSHPrivateKey: filepath.Join(dir, "key")})
	if got := debugfsCat(t, filepath.Join(dir, "rootfs.ext4"), "/var/lib/data.bin"); got != strings.Repeat("x", 100000) {
		t.Errorf("file content lost: %d bytes", len(got))
	}
	checkAgentInstalled(t, filepath.Join(dir, "rootfs.ext4"), "agent bytes")
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestPullOCIDiskFull converts an image whose layer does not fit the cache's 8 MiB tmpfs:
// the error says the disk is full and nothing is left behind.
func TestPullOCIDiskFull(t *testing.T) {
	dir := smallTmpfs(t, "8m")
	r := newTestRegistry(t)
	r.push(t, "big:1", testImage(t, "amd64", v1.Config{}, bigLayer(t, 16<<20)))
	m := ociManager(t, func(o *Options) { o.Dir = filepath.Join(dir, "cache") })
	defer m.Close() // before the unmount
	_, err := m.Pull(context.Background(), Source{OCI: r.ref("big:1")})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), `entry "data/blob"`) {
		t.Fatalf("pull onto a full disk: %v, want ENOSPC naming the entry", err)
	}
	if testing.Verbose() {
		t.Log(err)
	}
	assertNothingCached(t, m)
	assertTmpfsFreed(t, dir)
}

// TestPullOCIWithoutRoot pulls the rich test image as an unprivileged user (the test binary
// re-executed as nobody): owners, set-id bits, capabilities and device nodes come out as
// they do for root.
func TestPullOCIWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user (the non-root path itself runs whenever the tests do)")
	}
	ociManager(t) // skips without the tools
	r := newTestRegistry(t)
	r.push(t, "rich:1", richImage(t))
	dir, err := os.MkdirTemp("", "baseimage-oci-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	const nobody = 65534
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "baseimage.test")
	if err := copyFile(self, bin); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("kernel\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "agent"), []byte("agent binary\n"), 0o755)
	os.Chmod(dir, 0o755)
	os.Chown(dir, nobody, nobody)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"=oci", envHelperDir+"="+dir, envHelperURL+"="+r.ref("rich:1"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("pull as nobody: %v\n%s", err, ee.Stderr)
	}
	var b Bundle
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	checkRichRootfs(t, b.Rootfs)
}
