package smartvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// These tests run the whole lifecycle against the fake Firecracker (internal/fakefc), which
// this test binary becomes when run as "firecracker". The fake recognises the test guest
// kernel and emulates its modes. Each test checks that it leaks no process, goroutine or
// file, so they do not run in parallel.

// fakeEnv selects the fake's failure modes and release for the processes a test starts.
func fakeEnv(t *testing.T, version string, modes ...string) {
	t.Helper()
	t.Setenv("SMARTVM_FAKEFC_MODE", strings.Join(modes, ","))
	t.Setenv("SMARTVM_FAKEFC_VERSION", version)
}

// fakeSetup is the usual start of a fake test: leak checks, a root, the fake, a manager.
func fakeSetup(t *testing.T, opts ...Option) (mgr *Manager, root, kernel string) {
	t.Helper()
	testutil.CheckLeaks(t)
	root = testRoot(t)
	kernel = guestKernel(t)
	return newManager(t, root, testutil.Link(t, "firecracker"), opts...), root, kernel
}

func bothModes(t *testing.T, fn func(t *testing.T, mode BootMode)) {
	for _, mode := range []BootMode{BootModeAPI, BootModeConfigFile} {
		t.Run(string(mode), func(t *testing.T) { fn(t, mode) })
	}
}

func TestStartPauseResumeStop(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		mgr, root, kernel := fakeSetup(t)
		spec := guestSpec(kernel, testguest.ModeCounter)
		spec.BootMode = mode
		m := start(t, mgr, spec)
		con := followConsole(t, m)
		con.waitFor(t, testguest.TickLine(0))

		b, err := os.ReadFile(filepath.Join(root, "vms", m.Name(), "state.json"))
		if err != nil {
			t.Fatal(err)
		}
		st, err := rundir.ParseState(b)
		if err != nil {
			t.Fatal(err)
		}
		if st.PID != m.PID() || st.StartTime == 0 || st.Mode != ModeOwned || st.OwnerPID != os.Getpid() || st.FirecrackerVersion != fakefc.DefaultVersion {
			t.Errorf("state.json: %+v", st)
		}
		var recorded MachineSpec
		if err := json.Unmarshal(st.Spec, &recorded); err != nil || !cmp.Equal(recorded, m.Spec()) {
			t.Errorf("state.json spec %+v (%v), want %+v", recorded, err, m.Spec())
		}

		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if s, err := m.State(ctx); err != nil || s != StateRunning {
			t.Fatalf("state %v, %v", s, err)
		}
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if s, err := m.State(ctx); err != nil || s != StatePaused || m.Info().State != StatePaused {
			t.Fatalf("state after pause %v, %v", s, err)
		}
		con.drain(30 * time.Millisecond)
		if got := con.drain(60 * time.Millisecond); len(got) > 0 {
			t.Fatalf("ticks while paused: %q", got)
		}
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if n1, n2 := con.nextTick(t), con.nextTick(t); n2 <= n1 {
			t.Fatalf("tick %d after %d", n2, n1)
		}
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Wait(ctx); err != nil {
			t.Fatalf("wait after ctrl-alt-del: %v", err)
		}
		if s, _ := m.State(ctx); s != StateExited || m.Info().State != StateExited {
			t.Fatalf("state after stop %v", s)
		}
		if err := m.Pause(ctx); !errors.Is(err, ErrNotRunning) {
			t.Fatalf("pause after stop: %v, want ErrNotRunning", err)
		}
		if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("runtime dir left: %v", err)
		}
	})
}

// TestStartConfiguresEverything starts a VM with every kind of device in both boot modes and
// checks, through GET /vm/config, that Firecracker got the same configuration either way.
func TestStartConfiguresEverything(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		mgr, _, kernel := fakeSetup(t)
		files := t.TempDir()
		rootfs, ro, persistent := filepath.Join(files, "rootfs.ext4"), filepath.Join(files, "ro.img"), filepath.Join(files, "data.img")
		for _, p := range []string{rootfs, ro, persistent} {
			if err := os.WriteFile(p, []byte("image "+filepath.Base(p)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		limiter := &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 100}}
		spec := MachineSpec{
			Name:     "full",
			Kernel:   kernel,
			BootArgs: testguest.BootArgs(testguest.ModeHalt),
			VCPUs:    2, MemoryMiB: 256,
			Drives: []DriveSpec{
				{Path: rootfs, Root: true, CacheType: fcapi.CacheWriteback},
				{ID: "ro", Path: ro, ReadOnly: true, RateLimiter: limiter},
				{ID: "data", Path: persistent, Persistent: true, IOEngine: fcapi.IOEngineSync},
			},
			Interfaces: []InterfaceSpec{{TAP: "smvtap0", MAC: "06:00:ac:10:00:02", TxRateLimiter: limiter}},
			Vsock:      &VsockSpec{CID: 42},
			MMDS:       &MMDSSpec{Data: json.RawMessage(`{"latest":{"meta-data":{"id":"full"}}}`)},
			Balloon:    &BalloonSpec{AmountMiB: 64, DeflateOnOOM: true},
			Entropy:    &EntropySpec{},
			LogLevel:   "debug",
			Metrics:    true,
			BootMode:   mode,
		}
		m := start(t, mgr, spec)
		followConsole(t, m).waitFor(t, testguest.HaltLine)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		got, err := m.Client().GetVMConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		staged := filepath.Join(m.Dir(), "drives", "rootfs.img")
		want := fcapi.VMConfig{
			BootSource:    &fcapi.BootSource{KernelImagePath: kernel, BootArgs: spec.BootArgs},
			MachineConfig: &fcapi.MachineConfig{VCPUCount: 2, MemSizeMiB: 256},
			Drives: []fcapi.Drive{
				{DriveID: "rootfs", PathOnHost: staged, IsRootDevice: true, CacheType: fcapi.CacheWriteback},
				{DriveID: "ro", PathOnHost: ro, IsReadOnly: true, RateLimiter: limiter},
				{DriveID: "data", PathOnHost: persistent, IOEngine: fcapi.IOEngineSync},
			},
			NetworkInterfaces: []fcapi.NetworkInterface{{IfaceID: "eth0", HostDevName: "smvtap0", GuestMAC: "06:00:ac:10:00:02", TxRateLimiter: limiter}},
			Vsock:             &fcapi.Vsock{GuestCID: 42, UDSPath: filepath.Join(m.Dir(), "vsock.sock")},
			MMDSConfig:        &fcapi.MMDSConfig{Version: fcapi.MMDSv2, NetworkInterfaces: []string{"eth0"}},
			Balloon:           &fcapi.Balloon{AmountMiB: 64, DeflateOnOOM: true},
			Entropy:           &fcapi.EntropyDevice{},
		}
		// Firecracker reports defaults and the logger and metrics flags; compare what was set.
		norm := func(c fcapi.VMConfig) fcapi.VMConfig {
			c.Logger, c.Metrics, c.CPUConfig, c.MemoryHotplug, c.Pmem = nil, nil, nil, nil, nil
			for i := range c.Drives {
				d := &c.Drives[i]
				if d.CacheType == fcapi.CacheUnsafe {
					d.CacheType = ""
				}
				if d.IOEngine == fcapi.IOEngineSync && d.DriveID != "data" {
					d.IOEngine = ""
				}
			}
			if c.MachineConfig != nil {
				c.MachineConfig.HugePages = ""
			}
			if c.MMDSConfig != nil && c.MMDSConfig.IPv4Address == "169.254.169.254" {
				m := *c.MMDSConfig
				m.IPv4Address = ""
				c.MMDSConfig = &m
			}
			return c
		}
		if diff := cmp.Diff(norm(want), norm(got)); diff != "" {
			t.Errorf("vm config (-want +got):\n%s", diff)
		}
		if b, err := os.ReadFile(staged); err != nil || string(b) != "image rootfs.ext4" {
			t.Errorf("staged rootfs: %q, %v", b, err)
		}
		var data map[string]any
		if err := m.Client().GetMMDS(ctx, &data); err != nil || data["latest"] == nil {
			t.Errorf("mmds data %v, %v", data, err)
		}
		for _, p := range []string{m.LogPath(), m.Info().MetricsPath, m.ConsolePath()} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("missing %v", err)
			}
		}
		if mode == BootModeConfigFile {
			cfg, err := os.ReadFile(filepath.Join(m.Dir(), "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			cfg = bytes.ReplaceAll(cfg, []byte(m.Dir()), []byte("$VMDIR"))
			cfg = bytes.ReplaceAll(cfg, []byte(files), []byte("$FILES"))
			cfg = bytes.ReplaceAll(cfg, []byte(kernel), []byte("$KERNEL"))
			testutil.Golden(t, "config-file.json", cfg)
		}
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(persistent); err != nil {
			t.Errorf("persistent drive removed: %v", err)
		}
	})
}

// TestStartFailures makes each step of Start fail and checks the error and that everything
// was undone.
func TestStartFailures(t *testing.T) {
	type check func(t *testing.T, se *StartError)
	exited := func(code int) check {
		return func(t *testing.T, se *StartError) {
			var ee *ExitError
			if !errors.As(se, &ee) || ee.Code != code || se.Exit != ee {
				t.Errorf("exit error %+v, want code %d", se.Exit, code)
			}
			if se.LogTail == "" || !strings.Contains(se.Error(), "firecracker output:") {
				t.Errorf("no log tail in %q", se.Error())
			}
		}
	}
	// refused: the start stopped before firecracker was spawned, with an error containing want.
	refused := func(want string) check {
		return func(t *testing.T, se *StartError) {
			if se.Exit != nil || se.LogTail != "" {
				t.Errorf("firecracker ran: exit %v, log %q", se.Exit, se.LogTail)
			}
			if !strings.Contains(se.Error(), want) {
				t.Errorf("error %q lacks %q", se.Error(), want)
			}
		}
	}
	alive := func(t *testing.T, se *StartError) {
		if se.Exit != nil {
			t.Errorf("firecracker had died: %v", se.Exit)
		}
	}
	tests := []struct {
		name    string
		version string
		modes   []string
		timeout time.Duration
		spec    func(*MachineSpec)
		step    string
		is      error
		check   check
	}{
		{name: "exit early", modes: []string{fakefc.ModeExitEarly}, step: "wait for the API socket", is: fcapi.ErrProcessExited, check: exited(1)},
		{name: "no socket", modes: []string{fakefc.ModeNoSocket}, timeout: 300 * time.Millisecond, step: "wait for the API socket", is: context.DeadlineExceeded, check: alive},
		{name: "instance start fails", modes: []string{fakefc.ModeFailStart}, step: "InstanceStart", check: alive},
		{name: "newer field, api", version: "1.7.0", spec: func(s *MachineSpec) { s.Interfaces = []InterfaceSpec{{TAP: "t0", MTU: 1400}} },
			step: "check the firecracker version", is: errors.ErrUnsupported, check: refused(`field "network-interfaces.mtu": it needs v1.16.0`)},
		{name: "newer field, config file", version: "1.7.0", spec: func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{TAP: "t0", MTU: 1400}}
			s.BootMode = BootModeConfigFile
		}, step: "check the firecracker version", is: errors.ErrUnsupported, check: refused(`field "network-interfaces.mtu": it needs v1.16.0`)},
		{name: "newer flag", version: "1.7.0", spec: func(s *MachineSpec) { s.EnablePCI = true },
			step: "check the firecracker version", is: errors.ErrUnsupported,
			check: refused("firecracker v1.7.0 does not support the flag --enable-pci: it needs v1.13.0 or newer")},
		{name: "bad flag", spec: func(s *MachineSpec) { s.ExtraArgs = []string{"--no-such-flag"} },
			step: "wait for the API socket", is: fcapi.ErrProcessExited, check: exited(153)},
		{name: "cancelled", timeout: -1, step: "find firecracker", is: context.Canceled},
		{name: "kernel not an elf", spec: func(s *MachineSpec) {
			s.Kernel = filepath.Join(filepath.Dir(s.Kernel), "bzImage")
			if err := os.WriteFile(s.Kernel, []byte("MZ not an ELF kernel"), 0o644); err != nil {
				panic(err)
			}
		}, step: "InstanceStart", check: func(t *testing.T, se *StartError) {
			if !strings.Contains(se.Error(), "\nhint: the kernel must be an uncompressed ELF vmlinux") {
				t.Errorf("no hint about the kernel format in:\n%v", se)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakeEnv(t, tc.version, tc.modes...)
			mgr, root, kernel := fakeSetup(t)
			spec := guestSpec(kernel, testguest.ModeHalt)
			if tc.spec != nil {
				tc.spec(&spec)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			if tc.timeout > 0 {
				// Probe the version first, so the short ctx is all for the step under test.
				if _, _, err := mgr.Firecracker(ctx); err != nil {
					t.Fatal(err)
				}
				ctx, cancel = context.WithTimeout(context.Background(), tc.timeout)
			} else if tc.timeout < 0 {
				cancel()
			}
			defer cancel()
			m, err := mgr.Start(ctx, spec)
			if err == nil {
				m.Close()
				t.Fatal("start succeeded")
			}
			var se *StartError
			if !errors.As(err, &se) {
				t.Fatalf("error %T %v, want a *StartError", err, err)
			}
			if se.Step != tc.step || !strings.HasPrefix(se.Name, "vm-") {
				t.Errorf("step %q name %q, want step %q:\n%v", se.Step, se.Name, tc.step, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error does not wrap %v:\n%v", tc.is, err)
			}
			if tc.check != nil {
				tc.check(t, se)
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
				t.Errorf("left after a failed start: %v", ents)
			}
		})
	}
}

func TestStartRefusals(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	ctx := context.Background()

	if _, err := mgr.Start(ctx, MachineSpec{Name: "bad_name", Kernel: kernel}); err == nil || !strings.Contains(err.Error(), "invalid spec") {
		t.Errorf("invalid spec: %v", err)
	}
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "taken"
	start(t, mgr, spec)
	if _, err := mgr.Start(ctx, spec); !errors.Is(err, ErrExists) {
		t.Errorf("second vm with the name: %v, want ErrExists", err)
	}
	other, err := NewManager(WithRuntimeDir(root), WithFirecrackerBinary(mgr.bin))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Start(ctx, spec); !errors.Is(err, ErrExists) {
		t.Errorf("same name from another manager: %v, want ErrExists", err)
	}
	spec.Name = ""
	for bin, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing"): "no such file",
		"no-such-firecracker-here":            "not found in PATH",
		t.TempDir():                           "not an executable file",
	} {
		m2, err := NewManager(WithRuntimeDir(root), WithFirecrackerBinary(bin))
		if err != nil {
			t.Fatal(err)
		}
		var se *StartError
		if _, err := m2.Start(ctx, spec); !errors.As(err, &se) || se.Step != "find firecracker" || !strings.Contains(err.Error(), want) {
			t.Errorf("binary %s: %v, want %q", bin, err, want)
		}
		m2.Close()
	}
	script := filepath.Join(t.TempDir(), "firecracker")
	os.WriteFile(script, []byte("#!/bin/sh\necho 'hello there'\n"), 0o755)
	m3, _ := NewManager(WithRuntimeDir(root), WithFirecrackerBinary(script))
	if _, err := m3.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), `printed "hello there"`) {
		t.Errorf("bad --version output: %v", err)
	}
	m3.Close()
	if _, err := mgr.Start(ctx, MachineSpec{BaseImagePreset: "latest"}); err == nil || !strings.Contains(err.Error(), "WithBaseImages") {
		t.Errorf("base image without a base-image manager: %v", err)
	}
}

func TestManagerClosed(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, guestSpec(kernel, testguest.ModeCounter))
	if err := mgr.Close(); err != nil {
		t.Fatal(err)
	}
	if !processGone(m.PID(), 0) {
		t.Fatal("vm still running after the manager closed")
	}
	if err := m.Wait(context.Background()); err != nil {
		t.Errorf("wait after close: %v (ctrl-alt-del ends the counter guest with 0)", err)
	}
	if _, err := mgr.Start(context.Background(), guestSpec(kernel, testguest.ModeHalt)); !errors.Is(err, ErrClosed) {
		t.Errorf("start after close: %v", err)
	}
	if _, err := mgr.Attach(context.Background(), "x"); !errors.Is(err, ErrClosed) {
		t.Errorf("attach after close: %v", err)
	}
	if err := mgr.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestStopEscalation(t *testing.T) {
	tests := []struct {
		name    string
		modes   []string
		pause   bool
		grace   time.Duration
		timeout time.Duration
		wantErr error    // from Stop
		signal  string   // in Wait's ExitError; "" for exit 0
		notes   []string // the escalations WithStopNotify hears of
	}{
		{name: "ctrl-alt-del", grace: 10 * time.Second},
		{name: "ctrl-alt-del when paused", pause: true, grace: 10 * time.Second},
		{name: "sigterm", modes: []string{fakefc.ModeIgnoreCtrlAltDel}, signal: "SIGTERM",
			notes: []string{"the guest ignored Ctrl-Alt-Del for 200ms: sending SIGTERM"}},
		{name: "negative grace", modes: []string{fakefc.ModeIgnoreCtrlAltDel}, grace: -time.Hour, signal: "SIGTERM",
			notes: []string{"no grace period: sending SIGTERM"}},
		{name: "sigkill", modes: []string{fakefc.ModeIgnoreCtrlAltDel, fakefc.ModeIgnoreSigterm}, signal: "SIGKILL",
			notes: []string{"the guest ignored Ctrl-Alt-Del for 200ms: sending SIGTERM", "firecracker ignored SIGTERM for 1s: sending SIGKILL"}},
		{name: "ctx ends first", modes: []string{fakefc.ModeIgnoreCtrlAltDel}, grace: 10 * time.Second, timeout: 100 * time.Millisecond,
			wantErr: context.DeadlineExceeded, signal: "SIGKILL", notes: []string{"the stop ran out of time: sending SIGKILL"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakeEnv(t, "", tc.modes...)
			var (
				notesMu sync.Mutex
				notes   []string
			)
			opts := []Option{WithStopNotify(func(e StopEscalation) {
				notesMu.Lock()
				defer notesMu.Unlock()
				if e.VM != "vm-under-test" {
					t.Errorf("escalation names vm %q", e.VM)
				}
				notes = append(notes, e.String())
			})}
			if tc.grace != 0 {
				opts = append(opts, WithStopGracePeriod(tc.grace))
			}
			mgr, _, kernel := fakeSetup(t, opts...)
			spec := guestSpec(kernel, testguest.ModeCAD)
			spec.Name = "vm-under-test"
			m := start(t, mgr, spec)
			followConsole(t, m).waitFor(t, testguest.ReadyLine)
			if tc.pause {
				if err := m.Pause(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = waitLong
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			t0 := time.Now()
			err := m.Stop(ctx)
			if took := time.Since(t0); took > timeout+time.Second {
				t.Errorf("stop took %v with a %v ctx", took, timeout)
			}
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("stop: %v, want %v", err, tc.wantErr)
			}
			err = wait(t, m)
			var ee *ExitError
			switch {
			case tc.signal == "" && err != nil:
				t.Errorf("wait: %v, want exit 0", err)
			case tc.signal != "" && (!errors.As(err, &ee) || ee.Signal != tc.signal || ee.Code != -1):
				t.Errorf("wait: %v, want killed by %s", err, tc.signal)
			}
			if err := m.Stop(context.Background()); err != nil {
				t.Errorf("stop after the end: %v", err)
			}
			notesMu.Lock()
			defer notesMu.Unlock()
			if !slices.Equal(notes, tc.notes) {
				t.Errorf("escalations %q, want %q", notes, tc.notes)
			}
		})
	}
}

func TestWaitFanOut(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, guestSpec(kernel, testguest.ModeHalt))
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = m.Wait(context.Background()) })
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with a cancelled ctx: %v", err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var ee *ExitError
	if !errors.As(errs[0], &ee) || ee.Signal != "SIGKILL" || !strings.Contains(ee.Error(), "killed by signal SIGKILL") {
		t.Fatalf("wait: %v", errs[0])
	}
	for i, err := range errs {
		if err != errs[0] {
			t.Errorf("waiter %d got %v, waiter 0 %v", i, err, errs[0])
		}
	}
	if err := m.Kill(); err != nil {
		t.Errorf("second kill: %v", err)
	}
}

// TestGuestEndsByItself boots the hello guest: it prints its marker and resets, the machine
// cleans up without Close, and the console stream ends.
func TestGuestEndsByItself(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		mgr, _, kernel := fakeSetup(t)
		spec := guestSpec(kernel, testguest.ModeHello)
		spec.BootMode = mode
		m := start(t, mgr, spec)
		con := followConsole(t, m)
		if err := wait(t, m); err != nil {
			t.Fatalf("wait: %v, want nil", err)
		}
		con.waitFor(t, testguest.HelloLine)
		con.drain(waitLong) // returns when the stream ends
		if _, ok := <-con.lines; ok {
			t.Fatal("console stream did not end with the vm")
		}
		select {
		case <-m.Done():
		default:
			t.Fatal("Done not closed after Wait")
		}
		if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("runtime dir left: %v", err)
		}
		r, err := m.Console() // a late reader still gets the whole output
		if err != nil {
			t.Fatal(err)
		}
		b, err := readAll(r)
		if err != nil || !strings.Contains(string(b), testguest.HelloLine) {
			t.Fatalf("late console read %q, %v", b, err)
		}
		for range 2 {
			if err := m.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
		}
		var nilMachine *Machine
		if err := nilMachine.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func readAll(r io.ReadCloser) ([]byte, error) {
	defer r.Close()
	return io.ReadAll(r)
}

func TestConsoleCloseUnblocksRead(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, guestSpec(kernel, testguest.ModeHalt))
	r, err := m.Console()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := readAll(r)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("close did not end a blocked read")
	}
}

func TestConcurrentStarts(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	const n = 20
	ms := startMany(t, mgr, n, func(i int) MachineSpec {
		spec := guestSpec(kernel, testguest.ModeHalt)
		if i%2 == 1 {
			spec.BootMode = BootModeConfigFile
		}
		return spec
	})
	infos, err := mgr.List(context.Background())
	if err != nil || len(infos) != n {
		t.Fatalf("list: %d vms, %v", len(infos), err)
	}
	for _, info := range infos {
		if info.State != StateRunning {
			t.Errorf("vm %s: state %s", info.Name, info.State)
		}
	}
	if err := mgr.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, ms)
}

func TestList(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name, spec.Metrics = "b", true
	b := start(t, mgr, spec)
	spec.Name, spec.Metrics = "a", false
	a := start(t, mgr, spec)
	ctx := context.Background()
	if err := b.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	infos, err := mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Name != "a" || infos[1].Name != "b" {
		t.Fatalf("list %+v", infos)
	}
	ia, ib := infos[0], infos[1]
	if ia.State != StateRunning || ib.State != StatePaused || ia.PID != a.PID() || ia.Mode != ModeOwned ||
		ia.APISocket != a.APISocket() || ia.RuntimeDir != a.Dir() || ia.Spec.Name != "a" || ia.MetricsPath != "" || ib.MetricsPath == "" ||
		ia.FirecrackerVersion != fakefc.DefaultVersion || ia.Uptime(time.Now()) <= 0 {
		t.Errorf("infos %+v", infos)
	}
	mine := a.Info()
	mine.State = ia.State
	if diff := cmp.Diff(ia, mine); diff != "" {
		t.Errorf("List and Info differ (-list +info):\n%s", diff)
	}
	b.Kill()
	if infos, _ := mgr.List(ctx); len(infos) != 1 || infos[0].Name != "a" {
		t.Errorf("after kill: %+v", infos)
	}
}

// TestOwnerCrashReaped kills a process that owns a VM with SIGKILL: the VM dies with it, and
// the next manager removes what it left, its vsock socket outside the runtime root (and a
// vsock listener's socket next to it) included.
func TestOwnerCrashReaped(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	vsock := filepath.Join(t.TempDir(), "vm.vsock")
	spec.Vsock = &VsockSpec{CID: 3, Path: vsock}
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec})
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 1 {
		t.Fatalf("vm dirs while the owner runs: %v", ents)
	}
	if _, err := os.Lstat(vsock); err != nil {
		t.Fatalf("no vsock socket while the vm runs: %v", err)
	}
	// What a ListenVsock listener of the dead owner leaves: a socket nobody listens on.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: vsock + "_52", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	killOwner(t, owner)
	if !processGone(pid, time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("firecracker %d outlived its owner by more than 1s", pid)
	}
	mgr := newManager(t, root, bin)
	if infos, err := mgr.List(context.Background()); err != nil || len(infos) != 0 {
		t.Fatalf("list after reaping: %v, %v", infos, err)
	}
	if _, err := os.Lstat(vsock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dead vm's vsock socket was left: %v", err)
	}
	if _, err := os.Lstat(vsock + "_52"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dead owner's vsock listener socket was left: %v", err)
	}
}

// TestRemoveStaleSocket: only a socket nobody listens on is removed.
func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()
	stale, live, file := filepath.Join(dir, "stale.sock"), filepath.Join(dir, "live.sock"), filepath.Join(dir, "file")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stale, live, file, filepath.Join(dir, "missing")} {
		if err := removeStaleSocket(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket kept: %v", err)
	}
	for _, p := range []string{live, file} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}

// TestDetachedAttach starts a detached VM from a process that then exits, and adopts it from
// here: list, attach, pause, resume, release, attach again, stop.
func TestDetachedAttach(t *testing.T) {
	testutil.CheckLeaks(t)
	root, bin, pid := detachedVM(t, "detached", testguest.ModeCAD)
	mgr := newManager(t, root, bin) // does not reap a live VM
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	infos, err := mgr.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].Name != "detached" || infos[0].Mode != ModeDetached || infos[0].PID != pid {
		t.Fatalf("list %+v, %v", infos, err)
	}
	if _, err := mgr.Attach(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("attach to a missing vm: %v", err)
	}
	m, err := mgr.Attach(ctx, "detached")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := mgr.Attach(ctx, "detached"); again != m {
		t.Error("a second Attach made another Machine")
	}
	if m.PID() != pid || m.Spec().BootArgs != testguest.BootArgs(testguest.ModeCAD) || m.Info().Mode != ModeDetached {
		t.Errorf("attached %+v", m.Info())
	}
	con := followConsole(t, m)
	con.waitFor(t, testguest.ReadyLine)
	// A file of the caller's in the VM's directory goes with it.
	f, err := m.CreateFile(ctx, "notes.log")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.State(ctx); s != StatePaused {
		t.Fatalf("state %v", s)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	m, err = mgr.Attach(ctx, "detached")
	if err != nil {
		t.Fatalf("attach after release: %v", err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("wait on an attached vm: %v (its status is unknown)", err)
	}
	if !processGone(pid, 0) {
		t.Fatal("still running after stop")
	}
	if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir left: %v", err)
	}
	if _, err := m.CreateFile(ctx, "late.log"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateFile after the vm ended: %v, want ErrNotFound", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestAttachDeadVM kills a detached VM behind its manager's back: Attach reports ErrNotFound
// and reaps it.
func TestAttachDeadVM(t *testing.T) {
	testutil.CheckLeaks(t)
	root, bin, pid := detachedVM(t, "doomed", testguest.ModeHalt)
	mgr := newManager(t, root, bin)
	syscall.Kill(pid, syscall.SIGKILL)
	processGone(pid, waitLong)
	if _, err := mgr.Attach(context.Background(), "doomed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("attach to a dead vm: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "vms", "doomed")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead vm not reaped: %v", err)
	}
}

// TestAttachedKillCleansUp kills a detached VM whose starter has exited through Attach: with
// no owner left, the attached Machine removes the directory itself.
func TestAttachedKillCleansUp(t *testing.T) {
	testutil.CheckLeaks(t)
	root, bin, pid := detachedVM(t, "orphan", testguest.ModeHalt)
	mgr := newManager(t, root, bin)
	m, err := mgr.Attach(context.Background(), "orphan")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if !processGone(pid, 0) {
		t.Fatal("close did not kill the attached vm")
	}
	if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir left: %v", err)
	}
}

// TestHandleSignals sends SIGTERM to a process that called HandleSignals: it stops its VM,
// cleans up, and then dies of the signal.
func TestHandleSignals(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := testutil.Link(t, "firecracker")
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: guestSpec(guestKernel(t), testguest.ModeCounter), Signals: true})
	owner.Process.Signal(syscall.SIGTERM)
	err := owner.Wait()
	ws, _ := owner.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("owner ended with %v, want killed by SIGTERM", err)
	}
	if !processGone(pid, 0) {
		t.Fatal("vm outlived its owner's graceful exit")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
}

// TestHandleSignalsTwice: a second signal while the VMs stop (here a guest that ignores
// Ctrl-Alt-Del and a Firecracker that ignores SIGTERM, with a long grace period) kills them
// at once, and the owner then dies of the first signal.
func TestHandleSignalsTwice(t *testing.T) {
	testutil.CheckLeaks(t)
	fakeEnv(t, "", fakefc.ModeIgnoreCtrlAltDel, fakefc.ModeIgnoreSigterm)
	root := testRoot(t)
	bin := testutil.Link(t, "firecracker")
	const grace = time.Minute
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: guestSpec(guestKernel(t), testguest.ModeCounter), Signals: true, Grace: grace})
	exited := make(chan error, 1)
	go func() { exited <- owner.Wait() }()
	owner.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond) // two pending SIGTERMs would merge into one
	owner.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		ws, _ := owner.ProcessState.Sys().(syscall.WaitStatus)
		if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Fatalf("owner ended with %v, want killed by SIGTERM", err)
		}
	case <-time.After(waitLong):
		owner.Process.Kill()
		<-exited
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("the owner still stopped its vm %v after the second signal (grace %v)", waitLong, grace)
	}
	if !processGone(pid, 0) {
		t.Fatal("vm outlived its owner")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
}

// TestVersionProbedOnce counts `firecracker --version` runs: one per binary, again after the
// binary changes.
func TestVersionProbedOnce(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	script := filepath.Join(dir, "fc")
	body := "#!/bin/sh\n[ \"$1\" = --version ] && echo x >> " + count + "\nexec " + testutil.Link(t, "firecracker") + " \"$@\"\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	mgr := newManager(t, root, script)
	kernel := guestKernel(t)
	probes := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "x")
	}
	for range 3 {
		start(t, mgr, guestSpec(kernel, testguest.ModeHalt)).Kill()
	}
	if n := probes(); n != 1 {
		t.Fatalf("%d version probes for 3 starts", n)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(script, later, later)
	start(t, mgr, guestSpec(kernel, testguest.ModeHalt)).Kill()
	if n := probes(); n != 2 {
		t.Fatalf("%d version probes after the binary changed", n)
	}
}

// TestReleaseDetached starts a VM Detached, releases it, and adopts it with another manager
// on the same root, which stops it and removes what it left.
func TestReleaseDetached(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeCAD)
	spec.Name = "handoff"
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	owned := start(t, mgr, spec)
	if err := owned.Release(); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("release of an owned vm: %v", err)
	}
	owned.Close()
	m, err := mgr.Start(ctx, spec, Detached())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(); err != nil {
		t.Fatal(err)
	}
	other := newManager(t, root, mgr.bin)
	adopted, err := other.Attach(ctx, "handoff")
	if err != nil {
		t.Fatal(err)
	}
	if adopted.PID() != m.PID() {
		t.Fatalf("adopted pid %d, started %d", adopted.PID(), m.PID())
	}
	if err := adopted.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir left: %v", err)
	}
	adopted.Close()

	// Closing the manager releases its detached VMs instead of stopping them.
	spec.Name = "survivor"
	m, err = mgr.Start(ctx, spec, Detached())
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Close(); err != nil {
		t.Fatal(err)
	}
	if processGone(m.PID(), 0) {
		t.Fatal("closing the manager stopped a detached vm")
	}
	adopted, err = other.Attach(ctx, "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if err := adopted.Kill(); err != nil {
		t.Fatal(err)
	}
	adopted.Close()
}

// TestAttachStarting: a VM whose state.json has no pid yet (Start records a base image before
// it spawns firecracker) is not found while its starter holds it, and is reaped by Attach once
// the starter is gone.
func TestAttachStarting(t *testing.T) {
	mgr, _, _ := fakeSetup(t)
	ctx := context.Background()
	dir, err := mgr.root.Create(ctx, "starting")
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.WriteState(&rundir.State{Mode: ModeOwned}); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Attach(ctx, "starting"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "still starting") {
		t.Fatalf("attach to a starting vm: %v, want ErrNotFound saying it is starting", err)
	}
	if !mgr.root.Has("starting") {
		t.Fatal("attach reaped a vm that is starting")
	}
	dir.Unlock() // its starter died before spawning firecracker
	if _, err := mgr.Attach(ctx, "starting"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("attach to a vm whose starter died: %v, want ErrNotFound", err)
	}
	if mgr.root.Has("starting") {
		t.Fatal("the dead starter's vm was not reaped")
	}
}

// TestAttachConcurrent: concurrent Attach calls for one VM get the same Machine, and the
// Machines that lost the race leave no watcher behind.
func TestAttachConcurrent(t *testing.T) {
	testutil.CheckLeaks(t)
	root, bin, pid := detachedVM(t, "shared", testguest.ModeHalt)
	mgr := newManager(t, root, bin)
	const n = 8
	ms := make([]*Machine, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ms[i], errs[i] = mgr.Attach(context.Background(), "shared") })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ms[i] != ms[0] {
			t.Fatalf("attach %d: %p, %v; attach 0: %p", i, ms[i], errs[i], ms[0])
		}
	}
	if ms[0].PID() != pid {
		t.Fatalf("attached pid %d, want %d", ms[0].PID(), pid)
	}
	if err := ms[0].Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStartHints(t *testing.T) {
	for _, tc := range []struct{ fault, want string }{
		{"Start microvm error: ... Kernel Loader: Invalid Elf magic number", "uncompressed ELF vmlinux"},
		{"Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Resource busy (os error 16).", "held by one Firecracker"},
		{"Network config error: Could not create the network device: Open tap device failed: Invalid interface name", "create the TAP device first"},
		{"The requested operation is not supported after starting the microVM.", ""},
	} {
		err := fmt.Errorf("put: %w", &fcapi.APIError{Method: "PUT", Path: "/x", StatusCode: 400, FaultMessage: tc.fault})
		if got := startHint(err); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("hint for %q = %q, want one with %q", tc.fault, got, tc.want)
		}
	}
}
