package smartvm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// BenchmarkRealRestoreDiff restores the counter guest (128 MiB) from a full snapshot and from
// a chain of two diffs over it, in turn, and reports the medians of Manager.Restore for each
// (full-restore-ms, diff-restore-ms: the chain's check and merge included) and of
// Machine.Snapshot and Machine.SnapshotDiff (full-snap-ms, diff-snap-ms).
func BenchmarkRealRestoreDiff(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	mgr := benchManager(b, bin)
	spec := guestSpec(guestKernel(b), testguest.ModeCounter)
	spec.Name = "bench-diff"
	spec.MemoryMiB = 128
	spec.TrackDirtyPages = true
	ctx := context.Background()
	m := startPrinting(b, mgr, spec)
	t0 := time.Now()
	full, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "full"))
	fullSnap := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	d1, err := m.SnapshotDiff(ctx, filepath.Join(b.TempDir(), "d1"), full)
	if err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	d2, err := m.SnapshotDiff(ctx, filepath.Join(b.TempDir(), "d2"), d1)
	diffSnap := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	m.Close()
	m.Wait(ctx)

	snaps := []Snapshot{full, d2}
	times := make([][]time.Duration, len(snaps))
	for i := 0; b.Loop(); i++ {
		for j := range snaps {
			k := (i + j) % len(snaps)
			r, _ := restoreTimed(b, mgr, snaps[k])
			times[k] = append(times[k], r)
		}
	}
	b.ReportMetric(float64(median(times[0]).Microseconds())/1000, "full-restore-ms")
	b.ReportMetric(float64(median(times[1]).Microseconds())/1000, "diff-restore-ms")
	b.ReportMetric(float64(fullSnap.Microseconds())/1000, "full-snap-ms")
	b.ReportMetric(float64(diffSnap.Microseconds())/1000, "diff-snap-ms")
}
