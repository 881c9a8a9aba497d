package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// envBenchSmartvm names the smartvm executable BenchmarkRealRunExec runs: a build of
// cmd/smartvm (bench/run.sh builds one), not the test binary, whose start-up differs.
const envBenchSmartvm = "SMARTVM_BENCH_SMARTVM"

// benchMemMiB is the guest memory of both kinds of run.
const benchMemMiB = 32

// BenchmarkRealRunExec measures `smartvm run --kernel K` as a user runs it, from exec to exit,
// next to a bare `firecracker --config-file` booting the same guest (the test guest in hello
// mode: it prints a line and resets, which ends Firecracker). Each round runs both, in
// alternating order; it reports the medians (smartvm-ms, bare-ms) and their ratio. The
// smartvm runs share one runtime root, so only the first probes `firecracker --version`.
func BenchmarkRealRunExec(b *testing.B) {
	fc := testutil.FirecrackerBin(b)
	smartvmBin := os.Getenv(envBenchSmartvm)
	if smartvmBin == "" {
		b.Skipf("set %s to a smartvm binary (bench/run.sh builds one)", envBenchSmartvm)
	}
	dir := b.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := testguest.Write(kernel); err != nil {
		b.Fatal(err)
	}
	bootArgs := "console=ttyS0 reboot=k panic=1 " + testguest.BootArgs(testguest.ModeHello)
	cfg, err := json.Marshal(fcapi.VMConfig{
		BootSource:    &fcapi.BootSource{KernelImagePath: kernel, BootArgs: bootArgs},
		MachineConfig: &fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: benchMemMiB},
	})
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		b.Fatal(err)
	}
	shm, err := os.MkdirTemp("/dev/shm", "smartvm-bench-")
	if err != nil {
		shm = b.TempDir()
	} else {
		b.Cleanup(func() { os.RemoveAll(shm) })
	}
	runtime := filepath.Join(shm, "rt")
	n := 0
	run := func(name string, args ...string) time.Duration {
		cmd := exec.Command(name, args...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(t0)
		if err != nil {
			b.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return took
	}
	smartvmRun := func() time.Duration {
		return run(smartvmBin, "--firecracker-bin", fc, "--runtime-dir", runtime, "run",
			"--kernel", kernel, "--memory", strconv.Itoa(benchMemMiB), "--boot-args", bootArgs)
	}
	bareRun := func() time.Duration {
		n++
		sock := filepath.Join(shm, "bare-"+strconv.Itoa(n)+".sock")
		defer os.Remove(sock)
		return run(fc, "--api-sock", sock, "--config-file", cfgPath)
	}
	smartvmRun() // the first run probes the binary's version; later runs find it cached
	var sm, bare []float64
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			sm = append(sm, ms(smartvmRun()))
			bare = append(bare, ms(bareRun()))
		} else {
			bare = append(bare, ms(bareRun()))
			sm = append(sm, ms(smartvmRun()))
		}
	}
	medSM, medBare := median(sm), median(bare)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(medSM, "smartvm-ms")
	b.ReportMetric(medBare, "bare-ms")
	b.ReportMetric(medSM/medBare, "ratio")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
