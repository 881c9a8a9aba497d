package smartvm

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// benchCloneMiB is the guest memory of the clone benchmarks.
const benchCloneMiB = 128

// benchSnapshot boots the counter guest (benchCloneMiB of memory) under bin, snapshots it
// once it counts, and ends it.
func benchSnapshot(b *testing.B, mgr *Manager) Snapshot {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	spec := guestSpec(guestKernel(b), testguest.ModeCounter)
	spec.MemoryMiB = benchCloneMiB
	spec.Name = "bench-src"
	m, err := mgr.Start(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := waitSerial(m.ConsolePath(), 1); err != nil {
		b.Fatal(err)
	}
	snap, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap"))
	if err != nil {
		b.Fatal(err)
	}
	return snap
}

// waitSerial waits until the file at path holds at least n bytes.
func waitSerial(path string, n int64) error {
	deadline := time.Now().Add(waitLong)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no serial output in %s", path)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// BenchmarkRealRestore measures, with the real Firecracker, Manager.Restore under a new name
// from the call until it returns a running VM, next to a bare firecracker that loads the same
// snapshot through its API (spawn, wait for the socket, PUT /snapshot/load with resume_vm) in
// the same run. It reports the medians (restore-ms, bare-ms) and their ratio; the target is at
// most 1.15. bench/clone.sh runs it.
func BenchmarkRealRestore(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	mgr := benchManager(b, bin)
	snap := benchSnapshot(b, mgr)
	runs := []func() time.Duration{
		func() time.Duration { return restoreRenamedTimed(b, mgr, snap) },
		func() time.Duration { return loadBare(b, bin, snap) },
	}
	times := rotateRuns(b, runs)
	mr, mb := median(times[0]), median(times[1])
	b.ReportMetric(float64(mr.Microseconds())/1000, "restore-ms")
	b.ReportMetric(float64(mb.Microseconds())/1000, "bare-ms")
	b.ReportMetric(float64(mr)/float64(mb), "ratio")
}

// restoreRenamedTimed times Restore under a fresh name, then removes the VM (untimed).
func restoreRenamedTimed(b *testing.B, mgr *Manager, snap Snapshot) time.Duration {
	b.StopTimer()
	defer b.StartTimer()
	t0 := time.Now()
	m, err := mgr.Restore(context.Background(), snap, RestoreSpec{Name: randomName()})
	d := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	return d
}

// loadBare times a bare firecracker loading snap and resuming it through its API, then
// kills it (untimed).
func loadBare(b *testing.B, bin string, snap Snapshot) time.Duration {
	b.StopTimer()
	defer b.StartTimer()
	dir, err := os.MkdirTemp(filepath.Dir(filepath.Dir(rundir.DefaultPath())), "bare-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock, logPath := filepath.Join(dir, "api.sock"), filepath.Join(dir, "firecracker.log")
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "serial.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	t0 := time.Now()
	cmd := exec.Command(bin, "--api-sock", sock, "--log-path", logPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	body := map[string]any{
		"snapshot_path": filepath.Join(snap.Dir, snapshotState),
		"mem_file_path": filepath.Join(snap.Dir, snapshotMemory), // every release takes it
		"resume_vm":     true,
	}
	if err := rawPut(sock, "/snapshot/load", body); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// rawPut connects to a fresh Firecracker's API socket as soon as it listens and sends one
// PUT, which must answer 204.
func rawPut(sock, path string, v any) error {
	c, err := dialFresh(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return putRaw(c, bufio.NewReader(c), path, v)
}

// BenchmarkRealClone measures, with the real Firecracker, Clone of 20 VMs from one snapshot,
// from the call until all 20 run, and reports the median as clones per second (closing them
// is not timed).
func BenchmarkRealClone(b *testing.B) {
	const n = 20
	mgr := benchManager(b, testutil.FirecrackerBin(b))
	snap := benchSnapshot(b, mgr)
	var times []time.Duration
	for b.Loop() {
		t0 := time.Now()
		ms, err := mgr.Clone(context.Background(), snap, CloneSpec{Count: n, NamePrefix: "b" + randomName() + "-"})
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, d)
		b.StopTimer()
		for _, m := range ms {
			m.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n)/median(times).Seconds(), "clones/s")
	b.ReportMetric(float64(median(times).Microseconds())/1000, "ms/20")
}

// BenchmarkRealClonePSS measures memory, with the real Firecracker: the proportional set size
// (Pss in /proc/PID/smaps_rollup) of a firecracker that booted the counter guest with
// benchCloneMiB of memory (booted-MiB), and the mean Pss of each of 20 clones of its snapshot
// once each has printed more output (clone-MiB); beyond-MiB is the difference, the target is
// at most 2 MiB. The clones map the snapshot's memory file privately, so the pages they only
// read are shared through the page cache.
func BenchmarkRealClonePSS(b *testing.B) {
	const n = 20
	bin := testutil.FirecrackerBin(b)
	mgr := benchManager(b, bin)
	ctx := context.Background()
	var booted, clone float64
	for b.Loop() {
		b.StopTimer()
		spec := guestSpec(guestKernel(b), testguest.ModeCounter)
		spec.MemoryMiB = benchCloneMiB
		spec.Name = "pss-" + randomName()
		m, err := mgr.Start(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		waitTicks(b, m.ConsolePath())
		booted = pssMiB(b, m.PID())
		snap, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap"))
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
		ms, err := mgr.Clone(ctx, snap, CloneSpec{Count: n, NamePrefix: "p" + randomName() + "-"})
		if err != nil {
			b.Fatal(err)
		}
		var sum float64
		for _, c := range ms {
			waitTicks(b, c.ConsolePath())
		}
		for _, c := range ms {
			sum += pssMiB(b, c.PID())
		}
		clone = sum / n
		for _, c := range ms {
			c.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(booted, "booted-MiB")
	b.ReportMetric(clone, "clone-MiB")
	b.ReportMetric(clone-booted, "beyond-MiB")
}

// waitTicks waits until the console at path has grown by a few lines.
func waitTicks(b *testing.B, path string) {
	b.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := waitSerial(path, fi.Size()+64); err != nil {
		b.Fatal(err)
	}
}

// pssMiB reads the Pss of process pid in MiB.
func pssMiB(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatalf("no Pss in /proc/%d/smaps_rollup", pid)
	return 0
}
