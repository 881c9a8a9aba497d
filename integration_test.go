package smartvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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
	agentBin := buildStaticAgent(t)
	mgr := newManager(t, root, bin, WithBaseImages(images), WithStopGracePeriod(30*time.Second), WithAgentBinary(agentBin))
	spec := integrationSpec(os.Getenv)
	spec.Name = "integration"
	// The guest agent, installed into the staged root filesystem, reached over vsock.
	spec.Agent = true
	spec.Vsock = &VsockSpec{CID: 3}
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
	checkAgent(ctx, t, m)
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationRunOCI runs `smartvm run alpine -- cat /etc/os-release` with the real
// Firecracker: the OCI image is pulled and converted, the agent (smartvm itself, built
// static) is its init, and the main process's output comes through the agent, not the
// console, with its exit code. It needs SMARTVM_RUN_INTEGRATION=true, SMARTVM_FIRECRACKER_BIN,
// KVM, a guest kernel that boots here, and the network (the image's registry and the default
// preset's kernel), or a cache in SMARTVM_BASE_IMAGE_DIR that holds both.
func TestIntegrationRunOCI(t *testing.T) {
	if os.Getenv(envRunIntegration) != "true" {
		t.Skipf("boots an OCI image pulled from a registry: set %s=true (and %s) to run it", envRunIntegration, testutil.EnvFirecrackerBin)
	}
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	smartvmBin := filepath.Join(t.TempDir(), "smartvm")
	build := exec.Command("go", "build", "-o", smartvmBin, "./cmd/smartvm")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static: it is the guest's agent too
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build smartvm: %v\n%s", err, b)
	}
	images := os.Getenv(envImageDir)
	if images == "" {
		images = filepath.Join(t.TempDir(), "base-images")
	}
	root := testRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, smartvmBin, "run", "--no-install", "alpine", "--", "sh", "-c", "cat /etc/os-release; exit 3")
	cmd.Env = append(os.Environ(), "SMARTVM_FIRECRACKER_BIN="+bin, "SMARTVM_RUNTIME_DIR="+root, envImageDir+"="+images)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("smartvm run alpine: %v, want exit code 3 (the main process's)\nstderr:\n%s", err, stderr.Bytes())
	}
	if !bytes.Contains(stdout.Bytes(), []byte("ID=alpine")) {
		t.Errorf("stdout lacks ID=alpine:\n%s\nstderr:\n%s", stdout.Bytes(), stderr.Bytes())
	}
	if bytes.Contains(stdout.Bytes(), []byte("Linux version")) {
		t.Errorf("stdout holds the serial console's output, not only the main process's:\n%s", stdout.Bytes())
	}
}

// buildStaticAgent builds cmd/smartvm-agent without cgo into a temporary directory.
func buildStaticAgent(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "smartvm-agent")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/smartvm-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build smartvm-agent: %v\n%s", err, b)
	}
	return out
}

// checkAgent waits for the guest agent, runs a command through it and copies a file in and
// out.
func checkAgent(ctx context.Context, t *testing.T, m *Machine) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := m.WaitAgent(wctx); err != nil {
		t.Fatal(err)
	}
	out, err := m.Command(wctx, "cat", "/etc/os-release").Output()
	if err != nil || !bytes.Contains(out, []byte("NAME=")) {
		t.Fatalf("exec cat /etc/os-release: %q, %v", out, err)
	}
	ag := m.Agent()
	defer ag.Close()
	src := filepath.Join(t.TempDir(), "hello.txt")
	if err := os.WriteFile(src, []byte("from the host\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := ag.CopyTo(wctx, src, "/root/", CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "back.txt")
	if err := ag.CopyFrom(wctx, "/root/hello.txt", back, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(back); err != nil || string(b) != "from the host\n" {
		t.Errorf("copied back: %q, %v", b, err)
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
