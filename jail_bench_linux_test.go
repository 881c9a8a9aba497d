package smartvm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// BenchmarkStartJailer measures Start against the fake firecracker and fake jailer (root
// only), with and without the jailer, alternating the two in one loop so both see the same
// host. It reports the medians (direct-ms, jailed-ms) and their ratio; the target is at most
// 1.3. Stopping the VM is not timed.
func BenchmarkStartJailer(b *testing.B) {
	testutil.RequiresRoot(b)
	fc := testutil.HardLink(b, "firecracker")
	if err := linkBeside(fc, "jailer"); err != nil {
		b.Fatal(err)
	}
	mgr := benchManager(b, fc)
	base := filepath.Join(b.TempDir(), "jailer")
	spec := guestSpec(guestKernel(b), testguest.ModeHalt)
	jailed := spec
	jailed.Jailer = &JailerSpec{ChrootBase: base}
	ctx := context.Background()
	var direct, jail []time.Duration
	for b.Loop() {
		direct = append(direct, startClosed(b, mgr, ctx, spec))
		jail = append(jail, startClosed(b, mgr, ctx, jailed))
	}
	d, j := median(direct), median(jail)
	b.ReportMetric(float64(d.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(j.Microseconds())/1000, "jailed-ms")
	b.ReportMetric(float64(j)/float64(d), "ratio")
}
