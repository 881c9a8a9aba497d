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

// benchJailer measures mgr's Start of the test guest with and without the jailer, from the
// call until the VM runs, alternating the two (and which goes first) in one loop so both see
// the same host. It reports the medians (direct-ms, jailed-ms) and their ratio; the target is
// at most 1.3. Stopping the VM is not timed.
func benchJailer(b *testing.B, mgr *Manager) {
	spec := guestSpec(guestKernel(b), testguest.ModeHalt)
	jailed := spec
	jailed.Jailer = &JailerSpec{ChrootBase: filepath.Join(b.TempDir(), "jailer")}
	ctx := context.Background()
	var direct, jail []time.Duration
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			direct = append(direct, startClosed(b, mgr, ctx, spec))
			jail = append(jail, startClosed(b, mgr, ctx, jailed))
		} else {
			jail = append(jail, startClosed(b, mgr, ctx, jailed))
			direct = append(direct, startClosed(b, mgr, ctx, spec))
		}
	}
	d, j := median(direct), median(jail)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(d.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(j.Microseconds())/1000, "jailed-ms")
	b.ReportMetric(float64(j)/float64(d), "ratio")
}
