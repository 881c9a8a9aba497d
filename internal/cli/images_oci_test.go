package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testutil"
)

// TestImagesPullOCI pulls an OCI image by reference: ls shows its reference and digest, rm
// removes it by name.
func TestImagesPullOCI(t *testing.T) {
	t.Parallel()
	busybox := "/bin/busybox" // any static executable stands in for the agent
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("needs a static executable (busybox-static) as the agent binary")
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
			if _, err := os.Stat("/sbin/" + tool); err != nil {
				t.Skipf("needs %s", tool)
			}
		}
	}
	ref, digest := testutil.PushOCIImage(t, "testos:1", map[string]string{"etc/os-release": "ID=testos\n"}, []string{"cat", "/etc/os-release"})
	env := imagesEnv(t)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("a kernel"), 0o644)
	env[envAgentBin] = busybox
	env[envImageKernel] = kernel
	env.run(t, "images", "pull", "--rootfs-headroom", "0", ref).fails(t, ExitUsage, "invalid --rootfs-headroom 0")
	r := env.run(t, "images", "pull", "--rootfs-headroom", "8", ref).ok(t)
	if !strings.Contains(r.stdout, ref+" "+digest) || !strings.Contains(r.stderr, "layer 1/1 sha256:") {
		t.Errorf("pull:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}
	r = env.run(t, "images", "ls").ok(t)
	wantName := strings.TrimSuffix(ref, ":1") + ":1"
	if !strings.Contains(r.stdout, wantName) || !strings.Contains(r.stdout, ref+" "+digest) {
		t.Errorf("images ls:\n%s", r.stdout)
	}
	r = env.run(t, "images", "ls", "--json").ok(t)
	if !strings.Contains(r.stdout, `"digest": "`+digest+`"`) || !strings.Contains(r.stdout, `"cat",`) {
		t.Errorf("images ls --json:\n%s", r.stdout)
	}
	r = env.run(t, "images", "rm", wantName).ok(t)
	if !strings.HasPrefix(r.stdout, "removed ") {
		t.Errorf("rm: %s", r.stdout)
	}
	if r := env.run(t, "images", "ls").ok(t); strings.Contains(r.stdout, digest) {
		t.Errorf("still listed after rm:\n%s", r.stdout)
	}
}
