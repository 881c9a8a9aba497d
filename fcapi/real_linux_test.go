//go:build linux

package fcapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// realFC is one real Firecracker process with its API socket.
type realFC struct {
	sock, log      string
	stdout, stderr testutil.SyncBuffer
	done           chan struct{} // closed once the process has exited
	err            error
}

// startReal starts bin with an API socket and an Info log in dir; the test's cleanup kills it.
func startReal(t *testing.T, bin, dir, name string) *realFC {
	t.Helper()
	fc := &realFC{sock: filepath.Join(dir, name+".sock"), log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	if err := os.WriteFile(fc.log, nil, 0o600); err != nil { // v1.7.0 does not create it
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--api-sock", fc.sock, "--id", "fcapi-"+name, "--log-path", fc.log, "--level", "Info")
	cmd.Stdout, cmd.Stderr = &fc.stdout, &fc.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		fc.err = cmd.Wait()
		close(fc.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-fc.done
		os.Remove(fc.sock)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := WaitReady(ctx, fc.sock, fc.done); err != nil {
		t.Fatalf("%v\n%s", err, fc.output())
	}
	return fc
}

func (fc *realFC) output() string {
	log, _ := os.ReadFile(fc.log)
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s\nlog:\n%s", fc.stdout.String(), fc.stderr.String(), log)
}

// waitOutput waits until the guest's serial output (stdout) holds line.
func (fc *realFC) waitOutput(t *testing.T, line string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(fc.stdout.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q from the guest\n%s", line, fc.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func binaryVersion(t *testing.T, bin string) Version {
	t.Helper()
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	v, err := ParseVersion(first)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRealFirecracker drives a real Firecracker (SMARTVM_FIRECRACKER_BIN) through the client:
// readiness, version, machine configuration, the version gate, boot of the test guest, the
// pre- and post-boot refusals, pause and resume, and a snapshot restored in a new process.
func TestRealFirecracker(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	want := binaryVersion(t, bin)
	dir := shortDir(t)
	kernel := filepath.Join(dir, "vmlinux")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	fc := startReal(t, bin, dir, "vm")
	var deprecated []string
	c := New(fc.sock, WithDeprecationHandler(func(method, path string) { deprecated = append(deprecated, method+" "+path) }))
	defer c.Close()

	info, err := c.GetInstanceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "fcapi-vm" || info.State != StateNotStarted || info.AppName != "Firecracker" || info.VMMVersion != want.String() {
		t.Errorf("GET / = %+v", info)
	}
	if v, err := c.Version(ctx); err != nil || v != want {
		t.Fatalf("Version = %v, %v; the binary says %v", v, err, want)
	}

	// Machine configuration: defaults, PUT (cpu_template is deprecated: Firecracker flags it),
	// PATCH.
	mc, err := c.GetMachineConfig(ctx)
	if err != nil || mc.VCPUCount != 1 || mc.MemSizeMiB != 128 {
		t.Errorf("default machine config = %+v, %v", mc, err)
	}
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 64, CPUTemplate: CPUTemplateNone}); err != nil {
		t.Fatal(err)
	}
	if len(deprecated) != 1 || deprecated[0] != "PUT /machine-config" {
		t.Errorf("deprecation reports: %v", deprecated)
	}
	if err := c.PatchMachineConfig(ctx, MachineConfigUpdate{MemSizeMiB: 128, TrackDirtyPages: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	if mc, err := c.GetMachineConfig(ctx); err != nil || mc.MemSizeMiB != 128 || !mc.TrackDirtyPages {
		t.Errorf("after PATCH: %+v, %v", mc, err)
	}
	// kvm_capabilities works on every release, although the specs before v1.12 leave it out;
	// the next PUT replaces this template before the boot.
	if err := c.PutCPUConfig(ctx, CPUConfig{KVMCapabilities: []string{"1"}}); err != nil {
		t.Errorf("PutCPUConfig with kvm_capabilities: %v", err)
	}
	if err := c.PutCPUConfig(ctx, x86CPUIDTemplate); err != nil {
		t.Errorf("PutCPUConfig: %v", err)
	}
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: kernel, BootArgs: testguest.BootArgs(testguest.ModeHalt)}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.GetVMConfig(ctx)
	if err != nil || cfg.BootSource == nil || cfg.BootSource.KernelImagePath != kernel || cfg.MachineConfig == nil || cfg.MachineConfig.MemSizeMiB != 128 {
		t.Errorf("GET /vm/config = %+v, %v", cfg, err)
	}

	// The version gate: /serial arrived in v1.14, mtu in v1.16. What is refused never reaches
	// Firecracker (its log lists every request).
	err = c.PutSerial(ctx, SerialDevice{SerialOutPath: filepath.Join(dir, "serial.out")})
	if want.AtLeast(Version{Major: 1, Minor: 14}) {
		if err != nil {
			t.Errorf("PutSerial on v%v: %v", want, err)
		}
	} else {
		var u *UnsupportedError
		if !errors.As(err, &u) || !errors.Is(err, errors.ErrUnsupported) || u.Feature != "PUT /serial" {
			t.Errorf("PutSerial on v%v: %v, want an *UnsupportedError", want, err)
		}
	}
	if !want.AtLeast(Version{Major: 1, Minor: 16}) {
		err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 1400})
		if !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("mtu on v%v: %v", want, err)
		}
	}
	if _, err := c.GetInstanceInfo(ctx); err != nil { // a request the log must show after the refused ones
		t.Fatal(err)
	}
	log, _ := os.ReadFile(fc.log)
	if !want.AtLeast(Version{Major: 1, Minor: 14}) && strings.Contains(string(log), "/serial") {
		t.Errorf("the refused PUT /serial reached Firecracker:\n%s", log)
	}
	if strings.Contains(string(log), "network-interfaces") {
		t.Errorf("the refused network interface reached Firecracker:\n%s", log)
	}

	// A post-boot call before boot.
	if err := c.PauseVM(ctx); !errors.Is(err, ErrNotAllowedBeforeBoot) {
		t.Errorf("PauseVM before boot: %v, want ErrNotAllowedBeforeBoot", err)
	}

	if err := c.StartInstance(ctx); err != nil {
		t.Fatalf("%v\n%s", err, fc.output())
	}
	if want.AtLeast(Version{Major: 1, Minor: 14}) {
		waitFile(t, filepath.Join(dir, "serial.out"), testguest.FirstLine(testguest.ModeHalt))
	} else {
		fc.waitOutput(t, testguest.FirstLine(testguest.ModeHalt))
	}
	if info, err := c.GetInstanceInfo(ctx); err != nil || info.State != StateRunning {
		t.Errorf("after InstanceStart: %+v, %v", info, err)
	}

	// Pre-boot calls after boot.
	err = c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
	var apiErr *APIError
	if !errors.Is(err, ErrNotAllowedAfterBoot) || !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Errorf("PutMachineConfig after boot: %v, want ErrNotAllowedAfterBoot", err)
	}
	if err := c.StartInstance(ctx); !errors.Is(err, ErrNotAllowedAfterBoot) {
		t.Errorf("second InstanceStart: %v", err)
	}
	if err := c.FlushMetrics(ctx); err != nil {
		t.Errorf("FlushMetrics: %v", err)
	}

	for _, step := range []struct {
		do    func(context.Context) error
		state InstanceState
	}{{c.PauseVM, StatePaused}, {c.ResumeVM, StateRunning}, {c.PauseVM, StatePaused}} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if info, err := c.GetInstanceInfo(ctx); err != nil || info.State != step.state {
			t.Errorf("state %+v, %v; want %s", info, err, step.state)
		}
	}

	// Snapshot the paused VM and restore it in a fresh process, with dirty page tracking: the
	// client names that field as the running release knows it.
	snap := SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "vm.state"), MemFilePath: filepath.Join(dir, "vm.mem")}
	if err := c.CreateSnapshot(ctx, snap); err != nil {
		t.Fatalf("%v\n%s", err, fc.output())
	}
	restored := startReal(t, bin, dir, "restored")
	rc := New(restored.sock)
	defer rc.Close()
	err = rc.LoadSnapshot(ctx, SnapshotLoadParams{
		SnapshotPath: snap.SnapshotPath, MemBackend: MemoryBackend{BackendType: MemBackendFile, BackendPath: snap.MemFilePath},
		TrackDirtyPages: true, ResumeVM: true,
	})
	if err != nil {
		t.Fatalf("LoadSnapshot: %v\n%s", err, restored.output())
	}
	if info, err := rc.GetInstanceInfo(ctx); err != nil || info.State != StateRunning {
		t.Errorf("restored: %+v, %v", info, err)
	}
	if err := rc.PutBootSource(ctx, BootSource{KernelImagePath: kernel}); !errors.Is(err, ErrNotAllowedAfterBoot) {
		t.Errorf("PutBootSource after a restore: %v", err)
	}
	restoredLog, _ := os.ReadFile(restored.log)
	field, deprecatedField := "track_dirty_pages", "enable_diff_snapshots"
	if !want.AtLeast(Version{Major: 1, Minor: 13}) {
		field, deprecatedField = deprecatedField, field
	}
	if !strings.Contains(string(restoredLog), field) || strings.Contains(string(restoredLog), deprecatedField) {
		t.Errorf("the load did not use %s alone:\n%s", field, restoredLog)
	}
}

func waitFile(t *testing.T, path, line string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), line) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s; it holds %q", line, path, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
