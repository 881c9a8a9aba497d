package smartvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/testutil"
)

// The integration boot test downloads a real base image, so it runs only when asked.
const (
	envRunIntegration = "SMARTVM_RUN_INTEGRATION"
	envPreset         = "SMARTVM_BASE_IMAGE_PRESET"
	envManifestURL    = "SMARTVM_BASE_IMAGE_MANIFEST_URL"
	envManifestPath   = "SMARTVM_BASE_IMAGE_MANIFEST_PATH"
	envImageDir       = "SMARTVM_BASE_IMAGE_DIR"
	envBucketURL      = "SMARTVM_CI_BUCKET_URL"
)

// integrationSpec builds the spec the integration test boots from the environment: a
// manifest URL, else a manifest path, else a preset (latest by default).
func integrationSpec(getenv func(string) string) MachineSpec {
	switch {
	case getenv(envManifestURL) != "":
		return MachineSpec{BaseImageManifestURL: getenv(envManifestURL)}
	case getenv(envManifestPath) != "":
		return MachineSpec{BaseImageManifestPath: getenv(envManifestPath)}
	case getenv(envPreset) != "":
		return MachineSpec{BaseImagePreset: getenv(envPreset)}
	}
	return MachineSpec{BaseImagePreset: baseimage.PresetLatest}
}

func TestIntegrationSpecFromEnv(t *testing.T) {
	t.Parallel()
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		env  func(string) string
		want MachineSpec
	}{
		{env(), MachineSpec{BaseImagePreset: "latest"}},
		{env(envPreset, "lts"), MachineSpec{BaseImagePreset: "lts"}},
		{env(envPreset, "lts", envManifestPath, "/m.json"), MachineSpec{BaseImageManifestPath: "/m.json"}},
		{env(envManifestPath, "/m.json", envManifestURL, "https://x/m.json"), MachineSpec{BaseImageManifestURL: "https://x/m.json"}},
	}
	for _, tc := range tests {
		if got := integrationSpec(tc.env); got.BaseImagePreset != tc.want.BaseImagePreset ||
			got.BaseImageManifestPath != tc.want.BaseImageManifestPath || got.BaseImageManifestURL != tc.want.BaseImageManifestURL {
			t.Errorf("got %+v, want %+v", got, tc.want)
		}
	}
}

// TestIntegrationBaseImageBoot boots the base image the environment names with the real
// Firecracker and waits for the guest's login prompt on the serial console. It needs
// SMARTVM_RUN_INTEGRATION=true, SMARTVM_FIRECRACKER_BIN, KVM, and the network (or a cached
// bundle in SMARTVM_BASE_IMAGE_DIR).
func TestIntegrationBaseImageBoot(t *testing.T) {
	if os.Getenv(envRunIntegration) != "true" {
		t.Skipf("boots a downloaded base image: set %s=true (and %s) to run it", envRunIntegration, testutil.EnvFirecrackerBin)
	}
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	opts := baseimage.Options{Dir: os.Getenv(envImageDir), BucketURL: os.Getenv(envBucketURL)}
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "base-images")
	}
	images, err := baseimage.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	root := testRoot(t)
	mgr := newManager(t, root, bin, WithBaseImages(images), WithStopGracePeriod(30*time.Second))
	spec := integrationSpec(os.Getenv)
	spec.Name = "integration"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	m, err := mgr.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	t.Logf("booting %s (bundle %s), console %s", m.Name(), m.Info().BaseImage, m.ConsolePath())
	if err := waitOutput(ctx, m, []byte("login:"), 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitOutput reads the console until it holds want (a login prompt ends without a newline,
// so this does not read by lines).
func waitOutput(ctx context.Context, m *Machine, want []byte, timeout time.Duration) error {
	r, err := m.Console()
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found := make(chan error, 1)
	go func() {
		var seen []byte
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			seen = append(seen, buf[:n]...)
			if bytes.Contains(seen, want) {
				found <- nil
				return
			}
			if err != nil {
				found <- fmt.Errorf("console ended before %q: %w; last output:\n%s", want, err, tail(seen, 2048))
				return
			}
		}
	}()
	select {
	case err := <-found:
		return err
	case <-ctx.Done():
		r.Close()
		<-found
		return fmt.Errorf("no %q on the console within %v: %w", want, timeout, ctx.Err())
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
