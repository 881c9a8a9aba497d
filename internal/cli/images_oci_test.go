package cli

import (
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/smartvm/smartvm/internal/testutil"
)

// TestImagesPullOCI pulls an OCI image by reference: ls shows its reference and digest, rm
// removes it by name.
func TestImagesPullOCI(t *testing.T) {
	t.Parallel()
	ref, digest := testutil.PushOCIImage(t, "testos:1", map[string]string{"etc/os-release": "ID=testos\n"}, []string{"cat", "/etc/os-release"})
	env := ociCLIEnv(t)
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

// ociCLIEnv is the environment for pulling OCI images through the CLI: a static executable
// (busybox) as the agent and a kernel file. It skips without them or e2fsprogs.
func ociCLIEnv(t *testing.T) cliEnv {
	t.Helper()
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
	env := imagesEnv(t)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("a kernel"), 0o644)
	env[envAgentBin] = busybox
	env[envImageKernel] = kernel
	return env
}

// TestImagesPullOCIDockerConfig pulls from a registry that wants a password, with the
// credentials docker login wrote into $DOCKER_CONFIG/config.json.
func TestImagesPullOCIDockerConfig(t *testing.T) { // not parallel: it sets DOCKER_CONFIG
	env := ociCLIEnv(t)
	var locked atomic.Bool
	host := testutil.OCIRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); locked.Load() && (!ok || u != "me" || p != "s3cret") {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	ref := host + "/private:1"
	testutil.PushOCIImageTo(t, ref, map[string]string{"f": "x"}, nil)
	locked.Store(true)
	cfg := t.TempDir()
	t.Setenv("DOCKER_CONFIG", cfg)
	env.run(t, "images", "pull", ref).fails(t, ExitError, "registry authentication failed")
	auth := base64.StdEncoding.EncodeToString([]byte("me:s3cret"))
	os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600)
	env.run(t, "images", "pull", ref).ok(t)
}

// TestImagesPullOCIProxy pulls through the HTTP proxy $http_proxy names (a registry at a
// private address is reached over plain HTTP, so the proxy sees the requests).
func TestImagesPullOCIProxy(t *testing.T) {
	t.Parallel()
	env := ociCLIEnv(t)
	var proxied atomic.Int64
	host := testutil.OCIRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.IsAbs() {
				proxied.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	testutil.PushOCIImageTo(t, host+"/viaproxy:1", map[string]string{"f": "x"}, nil)
	env["http_proxy"] = "http://" + host
	env.run(t, "images", "pull", "10.255.255.1:5000/viaproxy:1").ok(t)
	if proxied.Load() == 0 {
		t.Error("no request went through the proxy")
	}
}

// TestImagesPullOCILimits: images pull --max-size and --max-files, else
// $SMARTVM_IMAGE_MAX_SIZE and $SMARTVM_IMAGE_MAX_FILES, bound what an image unpacks to; 0 is no
// limit, and a flag wins over the environment.
func TestImagesPullOCILimits(t *testing.T) {
	t.Parallel()
	ref, _ := testutil.PushOCIImage(t, "limits:1", map[string]string{"etc/os-release": "ID=testos\n", "etc/hostname": "x\n"}, nil)
	env := ociCLIEnv(t)
	env.run(t, "images", "pull", "--max-size", "lots", ref).fails(t, ExitError, `invalid --max-size "lots"`)
	env.run(t, "images", "pull", "--max-size", "1M", ref).fails(t, ExitError, "more than 1048576 bytes of files, its size limit: raise it (smartvm images pull --max-size")
	env[envImageMaxFiles] = "1"
	env.run(t, "images", "pull", ref).fails(t, ExitError, "more than 1 entries, its entry limit: raise it (smartvm images pull --max-files")
	env[envImageMaxFiles] = "-3"
	env.run(t, "images", "pull", ref).fails(t, ExitError, `invalid $SMARTVM_IMAGE_MAX_FILES "-3"`)
	env[envImageMaxSize] = "1M"
	env.run(t, "images", "pull", "--max-files", "0", "--max-size", "0", ref).ok(t)
}
