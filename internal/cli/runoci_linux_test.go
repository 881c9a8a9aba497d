package cli

import (
	"encoding/json"
	"os/exec"
	"slices"
	"testing"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/agent"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestRunOCIImage: run IMAGE -- CMD pulls the image, boots it with the agent as init waiting
// for its main process, and attaches that process: the image's config reaches the agent as
// /etc/smartvm/init.json in the root filesystem, -- CMD replaces its Cmd, and the exit code
// is run's. (The fake Firecracker boots nothing: the agent runs here, fed the bundle's
// init.json.)
func TestRunOCIImage(t *testing.T) {
	testutil.CheckLeaks(t)
	ref, _ := testutil.PushOCIImage(t, "runme:1", map[string]string{"etc/os-release": "ID=runme\n"}, []string{"echo", "from the image"})
	env := ociCLIEnv(t)
	for k, v := range fakeEnv(t) {
		if _, set := env[k]; !set {
			env[k] = v
		}
	}
	if err := testguest.Write(env[envImageKernel]); err != nil {
		t.Fatal(err)
	}
	env.run(t, "images", "pull", ref).ok(t)
	var bundles []struct {
		Rootfs   string `json:"rootfs"`
		BootArgs string `json:"boot_args"`
	}
	if err := json.Unmarshal([]byte(env.run(t, "images", "ls", "--json").ok(t).stdout), &bundles); err != nil || len(bundles) != 1 {
		t.Fatalf("images ls --json: %v, %d bundles", err, len(bundles))
	}
	out, err := exec.Command("debugfs", "-R", "cat "+baseimage.InitConfigPath, bundles[0].Rootfs).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	var init agent.InitConfig
	if err := json.Unmarshal(out, &init); err != nil || !slices.Equal(init.Args(), []string{"echo", "from the image"}) {
		t.Fatalf("init.json in the rootfs: %q, %v", out, err)
	}
	_, done := mainAgent(t, init)
	// The fake's guest is the test guest in its vsock mode, which the image's boot arguments
	// (kept after it) do not name.
	r := env.run(t, "run", "--boot-args", bootArgs(testguest.ModeVsockEcho)+" "+bundles[0].BootArgs, ref, "--", "sh", "-c", "echo replaced; exit 3")
	if r.code != 3 || r.stdout != "replaced\n" {
		t.Errorf("run IMAGE -- CMD: code %d, stdout %q, stderr %q; want 3 and the command's output", r.code, r.stdout, r.stderr)
	}
	if code := mainExit(t, done); code != 3 {
		t.Errorf("agent: main process exit code %d, want 3", code)
	}
	if vms := env.ps(t); len(vms) != 0 {
		t.Errorf("the VM is left after run: %+v", vms)
	}
}
