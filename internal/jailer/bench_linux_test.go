package jailer

import (
	"context"
	"os"
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
