package smartvm

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// BenchmarkStartJailer measures Start against the fake firecracker and fake jailer (root
// only), with and without the jailer (see benchJailer). Both fakes are copies of the test
// binary, whose start-up is most of what it measures. bench/jail.sh runs it.
func BenchmarkStartJailer(b *testing.B) {
	testutil.RequiresRoot(b)
	fc := testutil.HardLink(b, "firecracker")
	if err := linkBeside(fc, "jailer"); err != nil {
		b.Fatal(err)
	}
	benchJailer(b, benchManager(b, fc))
}

// BenchmarkRealStartJailer is BenchmarkStartJailer with the real jailer and firecracker of
// one release (SMARTVM_JAILER_BIN, SMARTVM_FIRECRACKER_BIN) booting the test guest under KVM.
// bench/jail.sh runs it.
func BenchmarkRealStartJailer(b *testing.B) {
	jailerBin, _ := testutil.JailerBins(b)
	fc := testutil.FirecrackerBin(b) // skips without /dev/kvm
	benchJailer(b, benchManager(b, fc, WithJailerBinary(jailerBin)))
}

// benchJailer measures mgr's Start of the test guest directly, in a jail of its own (cold),
// and in a warm jail (WarmJails), from the call until the VM runs, rotating the three (and
// which goes first) in one loop so all see the same host. Before each start the pool is
// refilled, untimed (WarmJails waits for the replacement that a warm start has made in the
// background once it returned), so that no timed start shares the host with a jail being
// made. It reports the medians
// (direct-ms, jailed-ms, warm-ms) and the ratios to direct (ratio for the cold jail,
// warm-ratio); the target is at most 1.3. Stopping the VM is not timed.
func benchJailer(b *testing.B, mgr *Manager) {
	spec := guestSpec(guestKernel(b), testguest.ModeHalt)
	jailed := spec
	jailed.Jailer = &JailerSpec{ChrootBase: shortJailBase(b)}
	warm := jailed
	warm.Metrics = true // another key than the cold jail's: it never takes a warm jail
	ctx := context.Background()
	refill := func() {
		b.StopTimer()
		if err := mgr.WarmJails(ctx, warm, 1); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	var times [3][]time.Duration
	specs := [3]MachineSpec{spec, jailed, warm}
	for i := 0; b.Loop(); i++ {
		for k := range 3 {
			n := (i + k) % 3
			refill()
			times[n] = append(times[n], startClosed(b, mgr, ctx, specs[n]))
		}
	}
	reportJailKinds(b, times)
}

// BenchmarkRealRestoreJailer measures a clone (Restore under a fresh name) of a running
// counter guest's snapshot, with the real jailer and firecracker of one release: directly, in
// a jail of its own (cold), and in a warm jail (WarmJails), rotating the three as
// benchJailer does, from the call until the clone runs. Each kind restores a snapshot of its
// own kind (unjailed, jailed); jailed clones share its memory file read-only
// (jailer.Shared). It reports the medians (direct-ms, jailed-ms, warm-ms) and the ratios to
// direct (ratio, warm-ratio). Stopping the clones is not timed.
func BenchmarkRealRestoreJailer(b *testing.B) {
	jailerBin, _ := testutil.JailerBins(b)
	fc := testutil.FirecrackerBin(b) // skips without /dev/kvm
	mgr := benchManager(b, fc, WithJailerBinary(jailerBin))
	ctx := context.Background()
	spec := guestSpec(guestKernel(b), testguest.ModeCounter)
	jailed := spec
	jailed.Jailer = &JailerSpec{ChrootBase: shortJailBase(b)}
	warm := jailed
	warm.Metrics = true // another key than the cold jail's: it never takes a warm jail
	var snaps [3]Snapshot
	for i, sp := range []MachineSpec{spec, jailed, warm} {
		sp.Name = fmt.Sprintf("src%d", i)
		m, err := mgr.Start(ctx, sp)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the guest counts
		if snaps[i], err = m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap")); err != nil {
			b.Fatal(err)
		}
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
	}
	var times [3][]time.Duration
	n := 0
	for i := 0; b.Loop(); i++ {
		for k := range 3 {
			kind := (i + k) % 3
			b.StopTimer()
			if err := mgr.WarmJails(ctx, warm, 1); err != nil {
				b.Fatal(err)
			}
			n++
			b.StartTimer()
			t0 := time.Now()
			c, err := mgr.Restore(ctx, snaps[kind], RestoreSpec{Name: fmt.Sprintf("clone%d", n)})
			times[kind] = append(times[kind], time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := c.Close(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	reportJailKinds(b, times)
}

// reportJailKinds reports the medians of the direct, cold-jailed and warm-jailed times
// (direct-ms, jailed-ms, warm-ms) and the ratios to direct (ratio, warm-ratio).
func reportJailKinds(b *testing.B, times [3][]time.Duration) {
	d, j, w := median(times[0]), median(times[1]), median(times[2])
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(d.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(j.Microseconds())/1000, "jailed-ms")
	b.ReportMetric(float64(w.Microseconds())/1000, "warm-ms")
	b.ReportMetric(float64(j)/float64(d), "ratio")
	b.ReportMetric(float64(w)/float64(d), "warm-ratio")
}
