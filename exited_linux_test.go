package smartvm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// recordOnly fails the test unless the VM's directory holds just its record: id, lock,
// state.json and serial.log.
func recordOnly(t *testing.T, root, name string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "vms", name))
	if err != nil {
		t.Fatalf("the exited vm's record: %v", err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if want := []string{rundir.IDFile, rundir.LockFile, rundir.SerialFile, rundir.StateFile}; !slices.Equal(got, want) {
		t.Errorf("the exited vm's directory holds %v, want only %v", got, want)
	}
}

// listExited lists the VMs and returns the one called name, which must be exited.
func listExited(t *testing.T, mgr *Manager, name string) MachineInfo {
	t.Helper()
	infos, err := mgr.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		if info.Name == name {
			if info.State != StateExited || info.Exit == nil {
				t.Fatalf("vm %s is listed as %s (exit %+v), want exited", name, info.State, info.Exit)
			}
			return info
		}
	}
	t.Fatalf("vm %s is not listed: %+v", name, infos)
	return MachineInfo{}
}

// A VM started with KeepExited that ends by itself is kept as exited: only its record and
// serial log stay, its staged drive and outside vsock socket are removed, a persistent drive
// stays in place, and its name is taken until Remove.
func TestKeepExitedGuestEnds(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeHello)
	spec.Name = "kept"
	spec.Labels = map[string]string{"team": "a"}
	dir := t.TempDir()
	scratch, disk := filepath.Join(dir, "scratch.img"), filepath.Join(dir, "disk.img")
	for _, p := range []string{scratch, disk} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spec.Drives = []DriveSpec{{ID: "scratch", Path: scratch}, {ID: "disk", Path: disk, Persistent: true}}
	vsock := filepath.Join(dir, "vm.vsock")
	spec.Vsock = &VsockSpec{CID: 3, Path: vsock}
	m := start(t, mgr, spec, KeepExited())
	if err := wait(t, m); err != nil {
		t.Fatalf("wait: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	recordOnly(t, root, "kept")
	if _, err := os.Lstat(vsock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the vsock socket outside the runtime root is left: %v", err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("the persistent drive: %v", err)
	}

	info := listExited(t, mgr, "kept")
	e := info.Exit
	if e.Code != 0 || e.Signal != "" || e.Reason != "guest reset or shut down (exit code 0)" || time.Since(e.EndedAt) > time.Minute {
		t.Errorf("exit: %+v", e)
	}
	if info.PID != 0 || info.APISocket != "" || info.Spec.Labels["team"] != "a" || info.Spec.Name != "kept" {
		t.Errorf("info of the exited vm: %+v", info)
	}
	if got, err := mgr.Info(context.Background(), "kept"); err != nil || got.State != StateExited || got.Exit.Reason != e.Reason {
		t.Errorf("Info: %+v, %v", got, err)
	}
	// The Machine's own record ends as List's does: one record.
	if diff := cmp.Diff(info, m.Info()); diff != "" {
		t.Errorf("Machine.Info of the ended vm differs from List's (-List +Machine.Info):\n%s", diff)
	}
	r, err := mgr.ConsoleLog("kept")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	r.Close()
	if err != nil || !strings.Contains(string(b), testguest.HelloLine) {
		t.Errorf("serial log of the exited vm: %q, %v", b, err)
	}

	if _, err := mgr.Attach(context.Background(), "kept"); !errors.Is(err, ErrExited) || !errors.Is(err, ErrNotRunning) {
		t.Errorf("attach an exited vm: %v, want ErrExited and ErrNotRunning", err)
	}
	_, err = mgr.Start(context.Background(), spec)
	if !errors.Is(err, ErrExists) || !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "smartvm rm kept") {
		t.Errorf("start with an exited vm's name: %v, want ErrExists and ErrExited saying how to remove it", err)
	}
	// Another manager (another process) reaps without touching the record.
	other := newManager(t, root, testutil.Link(t, "firecracker"))
	listExited(t, other, "kept")

	if err := mgr.Remove(context.Background(), "kept"); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, []*Machine{m})
	if err := mgr.Remove(context.Background(), "kept"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove twice: %v, want ErrNotFound", err)
	}
	if _, err := mgr.Info(context.Background(), "kept"); !errors.Is(err, ErrNotFound) {
		t.Errorf("info after remove: %v, want ErrNotFound", err)
	}
	m2 := start(t, mgr, spec) // the name is free again
	if err := wait(t, m2); err != nil {
		t.Fatal(err)
	}
	m2.Close()
	checkGone(t, root, []*Machine{m2})
}

// How a kept VM ended is recorded: stopped or killed by smartvm, killed from outside (a
// crash), and its serial log stays within WithSerialLogLimit.
func TestKeepExitedRecordsHow(t *testing.T) {
	const limit = 8 << 10
	mgr, root, kernel := fakeSetup(t, WithSerialLogLimit(limit))
	ctx := context.Background()

	spec := guestSpec(kernel, testguest.ModeCounter)
	spec.Name = "killed"
	m := start(t, mgr, spec, KeepExited())
	con := followConsole(t, m)
	con.waitFor(t, testguest.TickLine(2))
	// Running: not removable, and Info asks Firecracker.
	if err := mgr.Remove(ctx, "killed"); !errors.Is(err, ErrExists) {
		t.Errorf("remove a running vm: %v, want ErrExists", err)
	}
	if info, err := mgr.Info(ctx, "killed"); err != nil || info.State != StateRunning || info.Exit != nil {
		t.Errorf("info of a running vm: %+v, %v", info, err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	info := listExited(t, mgr, "killed")
	if e := info.Exit; e.Code != -1 || e.Signal != "SIGKILL" || e.Reason != "stopped: firecracker killed by signal SIGKILL" {
		t.Errorf("exit of a killed vm: %+v", e)
	}
	recordOnly(t, root, "killed")

	spec.Name = "crashed"
	m = start(t, mgr, spec, KeepExited())
	con = followConsole(t, m)
	// Enough output that the log must be bounded.
	deadline := time.Now().Add(waitLong)
	for fi, _ := os.Stat(m.ConsolePath()); fi == nil || fi.Size() < 4*limit; fi, _ = os.Stat(m.ConsolePath()) {
		if time.Now().After(deadline) {
			t.Fatal("the guest wrote too little")
		}
		con.drain(20 * time.Millisecond)
	}
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil { // as a crash would
		t.Fatal(err)
	}
	if err := wait(t, m); err == nil {
		t.Error("wait after a crash: nil")
	}
	m.Close()
	info = listExited(t, mgr, "crashed")
	if e := info.Exit; e.Code != -1 || e.Signal != "SIGKILL" || e.Reason != "firecracker killed by signal SIGKILL" {
		t.Errorf("exit of a crashed vm: %+v", e)
	}
	r, err := mgr.ConsoleLog("crashed")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if len(b) == 0 || len(b) > limit+4096 {
		t.Errorf("the exited vm's serial log shows %d bytes, want 1 to %d", len(b), limit+4096)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "vms", "crashed", rundir.SerialFile), &st); err != nil || st.Blocks*512 > limit+2*4096 {
		t.Errorf("the exited vm's serial.log takes %d bytes (%v), want at most about %d", st.Blocks*512, err, limit)
	}

	for _, name := range []string{"killed", "crashed"} {
		if err := mgr.Remove(ctx, name); err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left in the root: %v", ents)
	}
}

// A kept VM whose owner dies with it, or that ends while detached with nobody watching, is
// recorded as exited by the next reap, which releases what it held (its vsock socket outside
// the runtime root included).
func TestKeepExitedReaped(t *testing.T) {
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "orphan"
	vsock := filepath.Join(t.TempDir(), "vm.vsock")
	spec.Vsock = &VsockSpec{CID: 3, Path: vsock}
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Keep: true})
	killOwner(t, owner)
	if !processGone(pid, time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("firecracker %d outlived its owner by more than 1s", pid)
	}
	mgr := newManager(t, root, bin)
	info := listExited(t, mgr, "orphan")
	if e := info.Exit; e.Code != -1 || e.Reason != rundir.ReasonOwnerDied {
		t.Errorf("exit of a vm whose owner died: %+v", e)
	}
	recordOnly(t, root, "orphan")
	if _, err := os.Lstat(vsock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead vm's vsock socket was left: %v", err)
	}

	spec.Name = "unwatched"
	spec.Vsock = nil
	_, pid = runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Keep: true, Detached: true, Exit: true})
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !processGone(pid, 5*time.Second) {
		t.Fatalf("firecracker %d survived SIGKILL", pid)
	}
	// Attaching a dead kept VM records it, and says it has exited.
	if _, err := mgr.Attach(context.Background(), "unwatched"); !errors.Is(err, ErrExited) {
		t.Errorf("attach a dead kept vm: %v, want ErrExited", err)
	}
	info = listExited(t, mgr, "unwatched")
	if e := info.Exit; e.Code != -1 || e.Reason != rundir.ReasonUnwatched {
		t.Errorf("exit of a detached vm nobody watched: %+v", e)
	}
	recordOnly(t, root, "unwatched")
	for _, name := range []string{"orphan", "unwatched"} {
		if err := mgr.Remove(context.Background(), name); err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left in the root: %v", ents)
	}
}

// A jailed VM kept as exited gives back its jail (chroot, uid lease) whether its owner
// records its end or the next reap does.
func TestJailedKeepExited(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	base := filepath.Join(t.TempDir(), "jailer")
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "jailed"
	spec.Jailer = &JailerSpec{ChrootBase: base}
	mgr := newManager(t, root, bin)
	m := start(t, mgr, spec, KeepExited())
	followConsole(t, m).waitFor(t, testguest.TickLine(0))
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	// A jailed firecracker is not this process's child: killed, its status is not known.
	if info := listExited(t, mgr, "jailed"); info.Exit.Reason != "stopped (exit status unknown)" {
		t.Errorf("exit: %+v", info.Exit)
	}
	recordOnly(t, root, "jailed")
	jailLeft(t, base, root)
	if err := mgr.Remove(context.Background(), "jailed"); err != nil {
		t.Fatal(err)
	}
	// One that ends by itself logs its exit code, and the record has it.
	hello := spec
	hello.BootArgs = guestSpec("", testguest.ModeHello).BootArgs
	m = start(t, mgr, hello, KeepExited())
	if err := wait(t, m); err != nil {
		t.Fatalf("wait: %v", err)
	}
	m.Close()
	if info := listExited(t, mgr, "jailed"); info.Exit.Reason != "guest reset or shut down (exit code 0)" {
		t.Errorf("exit of a jailed guest that ended: %+v", info.Exit)
	}
	if err := mgr.Remove(context.Background(), "jailed"); err != nil {
		t.Fatal(err)
	}

	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Keep: true})
	killOwner(t, owner)
	if !processGone(pid, time.Second) {
		t.Fatalf("firecracker %d outlived its owner by more than 1s", pid)
	}
	if info := listExited(t, newManager(t, root, bin), "jailed"); info.Exit.Reason != rundir.ReasonOwnerDied {
		t.Errorf("exit: %+v", info.Exit)
	}
	recordOnly(t, root, "jailed")
	jailLeft(t, base, root)
	if err := mgr.Remove(context.Background(), "jailed"); err != nil {
		t.Fatal(err)
	}
}

// TestRealKeepExited boots the test guest with KeepExited on the real Firecracker: a guest
// that resets is recorded as exited with code 0 and its serial output, and a halted guest
// that is killed as stopped by SIGKILL; everything but the records is released, and Remove
// leaves nothing.
func TestRealKeepExited(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	mgr := newManager(t, root, bin)
	ctx := context.Background()

	spec := guestSpec(guestKernel(t), testguest.ModeHello)
	spec.Name = "reset"
	m := start(t, mgr, spec, KeepExited())
	if err := wait(t, m); err != nil {
		t.Fatalf("wait: %v", err)
	}
	m.Close()
	spec = guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Name = "halted"
	m = start(t, mgr, spec, KeepExited())
	followConsole(t, m).waitFor(t, testguest.HaltLine)
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()

	for name, want := range map[string]struct {
		code   int
		reason string
		line   string
	}{
		"reset":  {0, "guest reset or shut down (exit code 0)", testguest.HelloLine},
		"halted": {-1, "stopped: firecracker killed by signal SIGKILL", testguest.HaltLine},
	} {
		info := listExited(t, mgr, name)
		if info.Exit.Code != want.code || info.Exit.Reason != want.reason {
			t.Errorf("%s: exit %+v, want code %d and reason %q", name, info.Exit, want.code, want.reason)
		}
		recordOnly(t, root, name)
		r, err := mgr.ConsoleLog(name)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r)
		r.Close()
		if !strings.Contains(string(b), want.line) {
			t.Errorf("%s: kept serial log %q, want %q", name, b, want.line)
		}
		if err := mgr.Remove(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left in the root: %v", ents)
	}
}

// TestExitRecordMainExit: the main process's exit code the agent reported is kept, and is the
// reason a VM that then shut down by itself ended; a stopped or crashed VM keeps its own.
func TestExitRecordMainExit(t *testing.T) {
	for _, c := range []struct {
		st       proc.Status
		stopped  bool
		main     int
		reason   string
		mainCode int // -1: none recorded
	}{
		{proc.Status{Known: true}, false, 4, "main process exited with code 4", 4},
		{proc.Status{Known: true}, false, 0, "main process exited with code 0", 0},
		{proc.Status{Known: true}, false, -1, "guest reset or shut down (exit code 0)", -1},
		{proc.Status{Known: true}, true, 4, "stopped: guest reset or shut down (exit code 0)", 4},
		{proc.Status{Known: true, Code: -1, Signal: "SIGKILL"}, false, 7, "firecracker killed by signal SIGKILL", 7},
	} {
		e := exitRecord(c.st, c.stopped, c.main)
		got := -1
		if e.MainExitCode != nil {
			got = *e.MainExitCode
		}
		if e.Reason != c.reason || got != c.mainCode || e.Code != c.st.Code || e.Signal != c.st.Signal || e.At.IsZero() {
			t.Errorf("exitRecord(%+v, stopped %v, main %d) = %+v (main code %d), want reason %q, main code %d", c.st, c.stopped, c.main, e, got, c.reason, c.mainCode)
		}
	}
}

// loggedExit takes the exit code only from firecracker's own last exit line, 0 to 255.
func TestLoggedExit(t *testing.T) {
	for _, tc := range []struct {
		log  string
		code int
		ok   bool
	}{
		{"2026-12-06T10:00:00 [vm:main] Vmm is stopping.\n2026-12-06T10:00:00 [vm:main] Firecracker exiting successfully. exit_code=0\n", 0, true},
		{"x [vm:main] Firecracker exiting with error. exit_code=153\n", 153, true},
		{"x [vm:main] Firecracker exiting with error. exit_code=1\nx [vm:main] Firecracker exiting successfully. exit_code=0", 0, true},
		{"x [vm:main] Firecracker exiting with error. exit_code=999\n", 0, false},
		{"x [vm:main] Firecracker exiting with error. exit_code=-1\n", 0, false},
		{"x [vm:main] Firecracker exiting with error. exit_code=7 and more\n", 0, false},
		{"x [vm:main] Running Firecracker v1.7.0\n", 0, false},
		{"", 0, false},
	} {
		dir := t.TempDir()
		p := rundir.Paths{Log: filepath.Join(dir, "firecracker.log")}
		if err := os.WriteFile(p.Log, []byte(tc.log), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, ok := loggedExit(p); code != tc.code || ok != tc.ok {
			t.Errorf("loggedExit(%q) = %d, %v; want %d, %v", tc.log, code, ok, tc.code, tc.ok)
		}
	}
	// A log that is a FIFO or a link (the jail's to make) is not read.
	dir := t.TempDir()
	p := rundir.Paths{Log: filepath.Join(dir, "firecracker.log")}
	if err := syscall.Mkfifo(p.Log, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := loggedExit(p); ok {
		t.Error("a FIFO log was read")
	}
}
