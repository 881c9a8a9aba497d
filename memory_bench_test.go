package smartvm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// BenchmarkRealRestoreMemory restores one snapshot of the counter guest (128 MiB) with the
// MemoryFile backend, the MemoryUffd backend, and MemoryUffd prefaulted with the working set
// of an earlier restore, in turn, and reports for each the medians of the restore latency
// (Manager.Restore to a running VM) and of the time from the call to the guest's first
// serial output after it: file-restore-ms, file-output-ms, uffd-..., uffdpre-....
func BenchmarkRealRestoreMemory(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	kernel := guestKernel(b)
	mgr := benchManager(b, bin)
	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "bench-mem"
	spec.MemoryMiB = 128
	ctx := context.Background()
	m := startPrinting(b, mgr, spec)
	snap, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap"))
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	m.Wait(ctx)

	// The working set: what a restore touches in its first 100 ms.
	w, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd))
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	ws, err := w.WorkingSet()
	if err != nil {
		b.Fatal(err)
	}
	w.Close()
	w.Wait(ctx)

	names := []string{"file", "uffd", "uffdpre"}
	opts := [][]StartOption{{WithMemoryBackend(MemoryFile)}, {WithMemoryBackend(MemoryUffd)}, {WithMemoryBackend(MemoryUffd), WithPrefault(ws)}}
	restores := make([][]time.Duration, len(opts))
	outputs := make([][]time.Duration, len(opts))
	for i := 0; b.Loop(); i++ {
		for j := range opts {
			k := (i + j) % len(opts)
			r, o := restoreTimed(b, mgr, snap, opts[k]...)
			restores[k] = append(restores[k], r)
			outputs[k] = append(outputs[k], o)
		}
	}
	for k, name := range names {
		b.ReportMetric(float64(median(restores[k]).Microseconds())/1000, name+"-restore-ms")
		b.ReportMetric(float64(median(outputs[k]).Microseconds())/1000, name+"-output-ms")
	}
	b.ReportMetric(float64(len(ws)), "ws-pages")
}

// restoreTimed restores snap with opts and returns how long Restore took and how long
// until the guest's first serial output; stopping the VM is not timed.
func restoreTimed(b *testing.B, mgr *Manager, snap Snapshot, opts ...StartOption) (restore, output time.Duration) {
	b.StopTimer()
	defer b.StartTimer()
	first := watchFirstByte(filepath.Join(mgr.RuntimeDir(), "vms", snap.Name, "serial.log"))
	t0 := time.Now()
	m, err := mgr.Restore(context.Background(), snap, RestoreSpec{}, opts...)
	restore = time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	s := <-first
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	m.Wait(context.Background())
	if s.err != nil {
		b.Fatal(s.err)
	}
	return restore, s.at.Sub(t0)
}

// startPrinting starts spec and waits for the guest's first serial output.
func startPrinting(b *testing.B, mgr *Manager, spec MachineSpec) *Machine {
	b.Helper()
	first := watchFirstByte(filepath.Join(mgr.RuntimeDir(), "vms", spec.Name, "serial.log"))
	m, err := mgr.Start(context.Background(), spec)
	if err != nil {
		b.Fatal(err)
	}
	if s := <-first; s.err != nil {
		b.Fatal(s.err)
	}
	return m
}
