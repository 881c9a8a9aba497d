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

// envBenchFloor optionally names bench/execfloor, built: a Go command that only runs the
// bare firecracker and waits for it. BenchmarkRealRunExec then times it too, as the floor
// of any Go command's overhead on the host.
const envBenchFloor = "SMARTVM_BENCH_FLOOR"

// benchMemMiB is the guest memory of both kinds of run.
const benchMemMiB = 32

// BenchmarkRealRunExec measures `smartvm run --kernel K` as a user runs it, from exec to exit,
// next to a bare `firecracker --config-file` booting the same guest (the test guest in hello
// mode: it prints a line and resets, which ends Firecracker). Each round runs both, in
// turns as to which goes first. It reports the medians (smartvm-ms, bare-ms) and their ratio,
// and the medians of each round's ratio (pair-ratio) and difference (added-ms). The smartvm
// runs share one runtime root, so only the first probes `firecracker --version`. With
// $SMARTVM_BENCH_FLOOR, each round also times that command around the bare run, and reports
// its median (floor-ms), its ratio to the bare run's (floor-ratio) and the median of its
// rounds' differences from the bare run (floor-added-ms).
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
	bareArgs := func() []string {
		n++
		return []string{fc, "--api-sock", filepath.Join(shm, "bare-"+strconv.Itoa(n)+".sock"), "--config-file", cfgPath}
	}
	bareRun := func() time.Duration {
		args := bareArgs()
		defer os.Remove(args[2])
		return run(args[0], args[1:]...)
	}
	floorBin := os.Getenv(envBenchFloor)
	floorRun := func() time.Duration {
		args := bareArgs()
		defer os.Remove(args[2])
		return run(floorBin, args...)
	}
	smartvmRun() // the first run probes the binary's version; later runs find it cached
	var sm, bare, floor []float64
	kinds := []func(){
		func() { sm = append(sm, ms(smartvmRun())) },
		func() { bare = append(bare, ms(bareRun())) },
	}
	if floorBin != "" {
		kinds = append(kinds, func() { floor = append(floor, ms(floorRun())) })
	}
	for i := 0; b.Loop(); i++ {
		for k := range kinds { // each kind goes first in turn
			kinds[(i+k)%len(kinds)]()
		}
	}
	medSM, medBare := median(sm), median(bare)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(medSM, "smartvm-ms")
	b.ReportMetric(medBare, "bare-ms")
	b.ReportMetric(medSM/medBare, "ratio")
	b.ReportMetric(median(pairwise(sm, bare, ratio)), "pair-ratio")
	b.ReportMetric(median(pairwise(sm, bare, minus)), "added-ms")
	if floorBin != "" {
		b.ReportMetric(median(floor), "floor-ms")
		b.ReportMetric(median(floor)/medBare, "floor-ratio")
		b.ReportMetric(median(pairwise(floor, bare, minus)), "floor-added-ms")
	}
}

// pairwise is f of the runs of each round: a bare firecracker's run time varies by several
// milliseconds from run to run on a nested-KVM host (most of it in the kernel, building and
// destroying the VM), so a round's difference says more than a difference of medians.
func pairwise(a, b []float64, f func(x, y float64) float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = f(a[i], b[i])
	}
	return out
}

func ratio(x, y float64) float64 { return x / y }
func minus(x, y float64) float64 { return x - y }

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
