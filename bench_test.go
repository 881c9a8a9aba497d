package smartvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// benchManager returns a manager on a fresh root, closed when the benchmark ends.
func benchManager(b *testing.B, bin string) *Manager {
	b.Helper()
	mgr, err := NewManager(WithRuntimeDir(filepath.Join(b.TempDir(), "rt")), WithFirecrackerBinary(bin))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mgr.Close() })
	// Probe the binary's version now: a manager does it once per binary.
	if _, _, err := mgr.Firecracker(context.Background()); err != nil {
		b.Fatal(err)
	}
	return mgr
}

// BenchmarkStart measures Start against the fake Firecracker, from the call until it returns
// a running VM, in both boot modes. Stopping the VM is not timed.
func BenchmarkStart(b *testing.B) {
	kernel := guestKernel(b)
	for _, mode := range []BootMode{BootModeAPI, BootModeConfigFile} {
		b.Run(string(mode), func(b *testing.B) {
			mgr := benchManager(b, testutil.Link(b, "firecracker"))
			spec := guestSpec(kernel, testguest.ModeHalt)
			spec.BootMode = mode
			ctx := context.Background()
			for b.Loop() {
				m, err := mgr.Start(ctx, spec)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := m.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRealBootToSerial measures, with the real Firecracker and the test guest, the time
// from the call to Start until the guest's first serial byte, next to a bare
// `firecracker --config-file` run reaching its first serial byte, in the same run and with
// the same measurement: a goroutine polls the console file's size. It reports the medians
// and their ratio (the target is at most 1.2). bench/boot.sh runs it.
func BenchmarkRealBootToSerial(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	kernel := guestKernel(b)
	for _, mode := range []BootMode{BootModeAPI, BootModeConfigFile} {
		b.Run(string(mode), func(b *testing.B) {
			mgr := benchManager(b, bin)
			version, err := FirecrackerVersion(context.Background(), bin)
			if err != nil {
				b.Fatal(err)
			}
			spec := guestSpec(kernel, testguest.ModeHalt)
			spec.BootMode = mode
			var viaStart, bare []time.Duration
			for i := 0; b.Loop(); i++ {
				// Alternate which goes first, so neither always runs on a warmer host.
				if i%2 == 0 {
					viaStart = append(viaStart, bootViaStart(b, mgr, spec))
					bare = append(bare, bootBare(b, bin, version, spec))
				} else {
					bare = append(bare, bootBare(b, bin, version, spec))
					viaStart = append(viaStart, bootViaStart(b, mgr, spec))
				}
			}
			ms, mb := median(viaStart), median(bare)
			b.ReportMetric(float64(ms.Microseconds())/1000, "start-ms")
			b.ReportMetric(float64(mb.Microseconds())/1000, "bare-ms")
			b.ReportMetric(float64(ms)/float64(mb), "ratio")
		})
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// firstByte polls path until it holds a byte and returns when that was seen.
func firstByte(path string, deadline time.Time) (time.Time, error) {
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no serial output in %s", path)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

type seen struct {
	at  time.Time
	err error
}

func watchFirstByte(path string) <-chan seen {
	ch := make(chan seen, 1)
	go func() {
		at, err := firstByte(path, time.Now().Add(waitLong))
		ch <- seen{at, err}
	}()
	return ch
}

// bootViaStart times Start until the first serial byte, then removes the VM (untimed).
func bootViaStart(b *testing.B, mgr *Manager, spec MachineSpec) time.Duration {
	b.StopTimer()
	defer b.StartTimer()
	spec.Name = randomName()
	first := watchFirstByte(filepath.Join(mgr.RuntimeDir(), "vms", spec.Name, "serial.log"))
	t0 := time.Now()
	m, err := mgr.Start(context.Background(), spec)
	if err != nil {
		b.Fatal(err)
	}
	s := <-first
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	if s.err != nil {
		b.Fatal(s.err)
	}
	return s.at.Sub(t0)
}

// bootBare times a bare `firecracker --config-file` of the same VM until its first serial
// byte, then kills it (untimed).
func bootBare(b *testing.B, bin string, version fcapi.Version, spec MachineSpec) time.Duration {
	b.StopTimer()
	defer b.StartTimer()
	dir, err := os.MkdirTemp("", "bare-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := fcapi.VMConfig{
		BootSource:    &fcapi.BootSource{KernelImagePath: spec.Kernel, BootArgs: spec.BootArgs},
		MachineConfig: &fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: spec.MemoryMiB},
	}
	cfgPath, serial := filepath.Join(dir, "config.json"), filepath.Join(dir, "serial.log")
	if err := writeJSON(cfgPath, cfg); err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(serial)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	first := watchFirstByte(serial)
	t0 := time.Now()
	cmd := exec.Command(bin, "--api-sock", filepath.Join(dir, "api.sock"), "--config-file", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := <-first
	cmd.Process.Kill()
	cmd.Wait()
	if s.err != nil {
		b.Fatalf("bare firecracker %s: %v", version, s.err)
	}
	return s.at.Sub(t0)
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
