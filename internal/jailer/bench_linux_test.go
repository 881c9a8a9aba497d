package jailer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

// BenchmarkRealAPIReady measures, with the real jailer and firecracker (no guest: KVM is not
// needed), the time from spawning firecracker until its API answers GET /version, directly
// and through the jailer (the chroot prepared, the guard started, the jailer run with
// --new-pid-ns), alternating the two in one loop. Removing them is not timed. It reports the
// medians (direct-ms, jailed-ms) and their ratio.
func BenchmarkRealAPIReady(b *testing.B) {
	jailerBin, fc := testutil.JailerBins(b)
	exe := filepath.Join(b.TempDir(), "firecracker")
	data, err := os.ReadFile(fc)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		b.Fatal(err)
	}
	base, dir := b.TempDir(), b.TempDir()
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	ctx := context.Background()
	ready := func(sock string, done <-chan struct{}) {
		if err := fcapi.WaitReady(ctx, sock, done); err != nil {
			b.Fatal(err)
		}
		c := fcapi.New(sock)
		defer c.Close()
		if _, err := c.Version(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var direct, jailed []time.Duration
	n := 0
	for b.Loop() {
		n++
		sock := filepath.Join(dir, "api.sock")
		t0 := time.Now()
		p, err := proc.Start(proc.Config{Path: exe, Args: []string{"--api-sock", sock, "--id", "direct"}, Stdout: out, Stderr: out})
		if err != nil {
			b.Fatal(err)
		}
		ready(sock, p.Done())
		direct = append(direct, time.Since(t0))
		b.StopTimer()
		p.Signal(9)
		<-p.Done()
		os.Remove(sock)
		b.StartTimer()

		cfg := Config{ID: "bench-" + strconv.Itoa(n), ExecFile: exe, UID: 61010, GID: 61010, ChrootBase: base, NewPIDNS: true,
			FirecrackerArgs: []string{"--api-sock", "/api.sock"}}
		t0 = time.Now()
		tr, err := Prepare(cfg)
		if err != nil {
			b.Fatal(err)
		}
		j, err := Launch(jailerBin, cfg, proc.Config{Stdout: out, Stderr: out})
		if err != nil {
			b.Fatal(err)
		}
		ready(tr.Chroot().Host("/api.sock"), j.Firecracker.Done())
		jailed = append(jailed, time.Since(t0))
		b.StopTimer()
		j.Close()
		tr.Remove()
		tr.Close()
		b.StartTimer()
	}
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	d, jd := med(direct), med(jailed)
	b.ReportMetric(float64(d.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(jd.Microseconds())/1000, "jailed-ms")
	b.ReportMetric(float64(jd)/float64(d), "ratio")
}

// BenchmarkRealJailerAlone measures the real jailer's own work, without smartvm: the time
// from spawning `jailer --new-pid-ns ... -- --version` until the jailer has exited and the
// firecracker it started (after building the chroot, copying firecracker into it, making
// the device nodes, pivoting and cloning into a new PID namespace) has printed its version
// and exited, against `firecracker --version` run directly, alternating the two. Removing the
// chroot is not timed. It reports the medians (direct-ms, jailer-ms); their difference is
// what the jailer alone adds to a jailed start. The chroot base is in the benchmark's
// temporary directory, as BenchmarkRealStartJailer's. bench/jail.sh runs it.
func BenchmarkRealJailerAlone(b *testing.B) {
	jailerBin, fc := testutil.JailerBins(b)
	base := b.TempDir()
	run := func(path string, args ...string) time.Duration {
		t0 := time.Now()
		if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", path, err, out)
		}
		return time.Since(t0)
	}
	var direct, jailed []time.Duration
	for n := 0; b.Loop(); n++ {
		direct = append(direct, run(fc, "--version"))
		cfg := Config{ID: "alone-" + strconv.Itoa(n), ExecFile: fc, UID: 61011, GID: 61011, ChrootBase: base, NewPIDNS: true,
			FirecrackerArgs: []string{"--version"}}
		jailed = append(jailed, run(jailerBin, cfg.Args()...))
		b.StopTimer()
		if err := os.RemoveAll(cfg.Chroot().Dir()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(med(direct).Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(med(jailed).Microseconds())/1000, "jailer-ms")
}
