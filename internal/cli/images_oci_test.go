package cli

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// pushTestImage serves a one-layer linux/amd64 image from an in-process registry and returns
// its reference and manifest digest.
func pushTestImage(t *testing.T, repoTag string) (string, string) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644, Size: 11})
	tw.Write([]byte("ID=testos\n\n"))
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", v1.Config{Cmd: []string{"cat", "/etc/os-release"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/" + repoTag
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref, d.String()
}

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
	ref, digest := pushTestImage(t, "testos:1")
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
