package smartvm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// benchManager returns a manager on a fresh root, closed when the benchmark ends. The root is
// on the same kind of filesystem as the default one: tmpfs where /dev/shm is one.
func benchManager(b *testing.B, bin string, opts ...Option) *Manager {
	b.Helper()
	parent := filepath.Dir(filepath.Dir(rundir.DefaultPath())) // /dev/shm or $TMPDIR
	dir, err := os.MkdirTemp(parent, "smartvm-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	mgr, err := NewManager(append([]Option{WithRuntimeDir(filepath.Join(dir, "rt")), WithFirecrackerBinary(bin)}, opts...)...)
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
				startClosed(b, mgr, ctx, spec)
			}
		})
	}
}

// BenchmarkRealBootToSerial measures, with the real Firecracker and the test guest, the time
// from the call to Start until the guest's first serial byte, next to a bare
// `firecracker --config-file` run reaching its first serial byte, in the same run and with
// the same measurement (a goroutine polls the console file's size). It reports the medians
// (start-ms, bare-ms) and their ratio; the target is a ratio of at most 1.2. The API-mode run
// also reports bare-api-ms, the same Firecracker booted through its API by hand-written
// requests on one connection: the floor of any API-mode boot. bench/boot.sh runs it.
func BenchmarkRealBootToSerial(b *testing.B) {
	bin := testutil.FirecrackerBin(b)
	kernel := guestKernel(b)
	for _, mode := range []BootMode{BootModeAPI, BootModeConfigFile} {
		b.Run(string(mode), func(b *testing.B) {
			mgr := benchManager(b, bin)
			spec := guestSpec(kernel, testguest.ModeHalt)
			spec.BootMode = mode
			runs := []func() time.Duration{
				func() time.Duration { return bootViaStart(b, mgr, spec) },
				func() time.Duration { return bootBare(b, bin, spec, BootModeConfigFile) },
			}
			if mode == BootModeAPI {
				runs = append(runs, func() time.Duration { return bootBare(b, bin, spec, BootModeAPI) })
			}
			times := rotateRuns(b, runs)
			ms, mb := median(times[0]), median(times[1])
			b.ReportMetric(float64(ms.Microseconds())/1000, "start-ms")
			b.ReportMetric(float64(mb.Microseconds())/1000, "bare-ms")
			b.ReportMetric(float64(ms)/float64(mb), "ratio")
			if mode == BootModeAPI {
				b.ReportMetric(float64(median(times[2]).Microseconds())/1000, "bare-api-ms")
			}
		})
	}
}

// startClosed starts spec and returns how long Start took; closing the VM is not timed.
func startClosed(b *testing.B, mgr *Manager, ctx context.Context, spec MachineSpec) time.Duration {
	t0 := time.Now()
	m, err := mgr.Start(ctx, spec)
	d := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	return d
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
		time.Sleep(100 * time.Microsecond)
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

// bootBare times a bare firecracker boot of the same VM until its first serial byte, then
// kills it (untimed): with --config-file, or through the API with hand-written requests on a
// single connection.
func bootBare(b *testing.B, bin string, spec MachineSpec, mode BootMode) time.Duration {
	b.StopTimer()
	defer b.StartTimer()
	dir, err := os.MkdirTemp(filepath.Dir(filepath.Dir(rundir.DefaultPath())), "bare-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	boot := fcapi.BootSource{KernelImagePath: spec.Kernel, BootArgs: spec.BootArgs}
	machine := fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: spec.MemoryMiB}
	sock, serial, logPath := filepath.Join(dir, "api.sock"), filepath.Join(dir, "serial.log"), filepath.Join(dir, "firecracker.log")
	// Without --log-path Firecracker logs to stdout, which would count as serial output.
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	args := []string{"--api-sock", sock, "--log-path", logPath}
	if mode == BootModeConfigFile {
		cfgPath := filepath.Join(dir, "config.json")
		if err := writeJSON(cfgPath, fcapi.VMConfig{BootSource: &boot, MachineConfig: &machine}); err != nil {
			b.Fatal(err)
		}
		args = append(args, "--config-file", cfgPath)
	}
	out, err := os.Create(serial)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	first := watchFirstByte(serial)
	t0 := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if mode == BootModeAPI {
		if err := rawBoot(sock, machine, boot); err != nil {
			b.Fatal(err)
		}
	}
	s := <-first
	if s.err != nil {
		b.Fatalf("bare firecracker: %v", s.err)
	}
	return s.at.Sub(t0)
}

// rotateRuns runs each of runs once per b.Loop iteration, rotating which goes first so that
// none always runs on a warmer host, and returns the times each took.
func rotateRuns(b *testing.B, runs []func() time.Duration) [][]time.Duration {
	times := make([][]time.Duration, len(runs))
	for i := 0; b.Loop(); i++ {
		for j := range runs {
			k := (i + j) % len(runs)
			times[k] = append(times[k], runs[k]())
		}
	}
	return times
}

// rawBoot connects to a fresh Firecracker's API socket as soon as it listens and boots it
// with three requests on that one connection.
func rawBoot(sock string, machine fcapi.MachineConfig, boot fcapi.BootSource) error {
	c, err := dialFresh(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, r := range []struct {
		path string
		body any
	}{
		{"/machine-config", machine},
		{"/boot-source", boot},
		{"/actions", map[string]string{"action_type": "InstanceStart"}},
	} {
		if err := putRaw(c, br, r.path, r.body); err != nil {
			return err
		}
	}
	return nil
}

// dialFresh connects to the API socket of a Firecracker just spawned as soon as it listens
// (within waitLong).
func dialFresh(sock string) (net.Conn, error) {
	deadline := time.Now().Add(waitLong)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// putRaw sends one PUT of v to path over c (its responses read through br), which must
// answer 204.
func putRaw(c net.Conn, br *bufio.Reader, path string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("PUT %s: %s", path, resp.Status)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
