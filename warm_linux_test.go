package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// warmIDs returns the warm jails' IDs under the chroot base, sorted.
func warmIDs(t *testing.T, base string) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(base, "firecracker"))
	var ids []string
	for _, e := range ents {
		if jailer.IsWarmID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// shortJailBase returns a chroot base short enough for a warm jail's API socket path: a test's
// own temporary directory, named after the test, may be too long.
func shortJailBase(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "jailer")
}

// newJailManager returns a manager (with opts) of a fresh runtime root running the fake
// jailer pair (bin), and a short chroot base, long enough for any jail's API socket path
// (warm jails' included); the test needs root and fails if it leaks.
func newJailManager(t *testing.T, opts ...Option) (mgr *Manager, root, bin, base string) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root = testRoot(t)
	bin = fakeJailPair(t)
	return newManager(t, root, bin, opts...), root, bin, shortJailBase(t)
}

// warmUp makes n warm jails under base for a counter guest, and returns its spec and the
// jails' IDs.
func warmUp(t *testing.T, ctx context.Context, mgr *Manager, base string, n int) (MachineSpec, []string) {
	t.Helper()
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Jailer = &JailerSpec{ChrootBase: base}
	if err := mgr.WarmJails(ctx, spec, n); err != nil {
		t.Fatal(err)
	}
	ids := warmIDs(t, base)
	if len(ids) != n {
		t.Fatalf("warm jails %v, want %d", ids, n)
	}
	return spec, ids
}

// runIDOf returns the --id firecracker pid was started with.
func runIDOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	if i := slices.Index(args, "--id"); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// killAndDrain kills m, removes the warm jails of spec's key and checks that nothing of a jail
// is left.
func killAndDrain(t *testing.T, ctx context.Context, mgr *Manager, m *Machine, spec MachineSpec, base, root string) {
	t.Helper()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	drainWarm(t, ctx, mgr, spec, base, root)
}

// drainWarm removes the warm jails of spec's key and checks that nothing of a jail is left
// under base or in root.
func drainWarm(t *testing.T, ctx context.Context, mgr *Manager, spec MachineSpec, base, root string) {
	t.Helper()
	if err := mgr.WarmJails(ctx, spec, 0); err != nil {
		t.Fatal(err)
	}
	jailLeft(t, base, root)
}

// waitWarm waits until n warm jails are under base (a refill runs in the background).
func waitWarm(t *testing.T, base string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		ids := warmIDs(t, base)
		if len(ids) == n || time.Now().After(deadline) {
			return ids
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A jailed start takes a warm jail made ahead: the jail and its uid lease take the VM's name,
// the VM runs in it as in a jail of its own, a replacement is made, and nothing is left once
// the VM, then the pool, ends. A spec that does not match starts its own jail.
func TestWarmJails(t *testing.T) {
	mgr, root, bin, base := newJailManager(t)
	disk := filepath.Join(filepath.Dir(base), "disk.img") // on the chroot base's filesystem
	os.WriteFile(disk, make([]byte, 4096), 0o640)
	os.Chown(disk, 1234, 1234)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, warm := warmUp(t, ctx, mgr, base, 2)
	if infos, err := mgr.List(ctx); err != nil || len(infos) != 0 {
		t.Errorf("List shows warm jails: %+v, %v", infos, err)
	}

	spec.Name = "took-warm"
	spec.Drives = []DriveSpec{{ID: "data", Path: disk, Persistent: true}}
	m := start(t, mgr, spec)
	if id := runIDOf(t, m.PID()); !slices.Contains(warm, id) {
		t.Errorf("firecracker runs with --id %q, not one of the warm jails %v", id, warm)
	}
	chroot := filepath.Join(base, "firecracker", spec.Name, "root")
	if got := m.APISocket(); got != filepath.Join(chroot, "run", "api.sock") {
		t.Errorf("API socket %s, want the host path in the jail renamed for the vm", got)
	}
	uid := strings.Fields(procStatus(t, m.PID(), "Uid"))[0]
	leases, err := os.ReadFile(filepath.Join(root, jailIDsDir, uid))
	if err != nil || strings.TrimSpace(string(leases)) != spec.Name {
		t.Errorf("uid %s's lease holder %q (%v), want the vm's name", uid, leases, err)
	}
	var st syscall.Stat_t
	syscall.Stat(disk, &st)
	if strconv.Itoa(int(st.Uid)) != uid {
		t.Errorf("persistent drive is owned by %d while the jail runs as %s", st.Uid, uid)
	}
	b, err := os.ReadFile(filepath.Join(root, "vms", spec.Name, rundir.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var state rundir.State
	json.Unmarshal(b, &state)
	if state.Jail == nil || state.Jail.Chroot != chroot || state.PID != m.PID() {
		t.Errorf("state.json: pid %d, jail %+v", state.PID, state.Jail)
	}
	followConsole(t, m).waitFor(t, testguest.TickLine(0))
	// Another process's view: the VM, adoptable; no warm jail.
	other := newManager(t, root, bin)
	if infos, err := other.List(ctx); err != nil || len(infos) != 1 || infos[0].Name != spec.Name || infos[0].State != StateRunning {
		t.Errorf("List = %+v, %v", infos, err)
	}
	// One of the two made before stays; the taken one's place is filled by a new one.
	left := waitWarm(t, base, 2)
	kept := slices.DeleteFunc(slices.Clone(left), func(id string) bool { return !slices.Contains(warm, id) })
	if len(left) != 2 || len(kept) != 1 || kept[0] == runIDOf(t, m.PID()) {
		t.Errorf("warm jails after the take %v (made before: %v): want one of those and a new one", left, warm)
	}

	cold := spec
	cold.Name, cold.Drives, cold.Metrics = "cold", nil, true // started differently
	c := start(t, mgr, cold)
	if id := runIDOf(t, c.PID()); id != "cold" {
		t.Errorf("a spec of another key ran in a warm jail (--id %q)", id)
	}
	for _, vm := range []*Machine{m, c} {
		if err := vm.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Close()
	}
	syscall.Stat(disk, &st)
	if st.Uid != 1234 {
		t.Errorf("persistent drive not given back: uid %d", st.Uid)
	}
	drainWarm(t, ctx, mgr, spec, base, root)
}

// Close removes the warm jails; so does a new template.
func TestWarmJailsReplaced(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	mgr, err := NewManager(WithRuntimeDir(root), WithFirecrackerBinary(bin))
	if err != nil {
		t.Fatal(err)
	}
	base := shortJailBase(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, first := warmUp(t, ctx, mgr, base, 1)
	spec.Metrics = true
	if err := mgr.WarmJails(ctx, spec, 1); err != nil {
		t.Fatal(err)
	}
	if now := warmIDs(t, base); len(now) != 1 || slices.Equal(now, first) {
		t.Errorf("warm jails %v after a new template, were %v", now, first)
	}
	if err := mgr.Close(); err != nil {
		t.Fatal(err)
	}
	jailLeft(t, base, root)
	if err := mgr.WarmJails(ctx, spec, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("WarmJails after Close: %v", err)
	}
}

func TestWarmJailsRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	mgr := newManager(t, root, fakeJailPair(t))
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	jailed := func(edit func(*MachineSpec)) MachineSpec {
		s := spec
		s.Jailer = &JailerSpec{ChrootBase: filepath.Join(t.TempDir(), "jailer")}
		edit(&s)
		return s
	}
	long := jailed(func(s *MachineSpec) { s.Jailer.ChrootBase = "/" + strings.Repeat("j", 60) })
	if err := mgr.WarmJails(t.Context(), long, 1); err == nil || !strings.Contains(err.Error(), "shorter chroot base") {
		t.Errorf("warm jails whose api socket path is too long: %v", err)
	}
	for _, tc := range []struct {
		spec MachineSpec
		n    int
		want string
	}{
		{spec, 1, "no JailerSpec"},
		{jailed(func(s *MachineSpec) { s.BootMode = BootModeConfigFile }), 1, "config-file boot"},
		{jailed(func(s *MachineSpec) { s.Network = &NetworkSpec{} }), 1, "Network"},
		{jailed(func(s *MachineSpec) { s.Jailer.MemoryLimit, s.Jailer.CgroupVersion = 1<<30, 2 }), 1, "cgroup v2"},
		{jailed(func(s *MachineSpec) { s.Jailer.UID = 5 }), 1, "give both"},
		{jailed(func(*MachineSpec) {}), -1, "negative"},
	} {
		err := mgr.WarmJails(t.Context(), tc.spec, tc.n)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("WarmJails(%+v, %d) = %v, want an error about %q", tc.spec, tc.n, err, tc.want)
		}
	}
	spec.Name = jailer.NewWarmID()
	if err := spec.Validate(); err == nil || !strings.Contains(err.Error(), "warm jails") {
		t.Errorf("a VM named as a warm jail: %v", err)
	}
}

// The owner's SIGKILL ends its warm jails and the VM that took one at once, and the next
// manager reaps them all.
func TestWarmJailsOwnerKilled(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "warm-owner"
	base := shortJailBase(t)
	spec.Jailer = &JailerSpec{ChrootBase: base}
	cmd, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Warm: 1})
	st, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if id := runIDOf(t, pid); !jailer.IsWarmID(id) {
		t.Errorf("the owner's VM runs with --id %q, not in a warm jail", id)
	}
	warm := waitWarm(t, base, 1)
	if len(warm) != 1 {
		t.Fatalf("warm jails %v: the replacement was not made", warm)
	}
	// Its jail directory comes first; its firecracker, once state.json records the jail.
	deadline := time.Now().Add(waitLong)
	for !jailer.Running(warm[0]) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	killOwner(t, cmd)
	testutil.GoneWithin(t, pid, st, time.Second)
	deadline = time.Now().Add(waitLong)
	for jailer.Running(warm[0]) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	newManager(t, root, bin) // reaps
	jailLeft(t, base, root)
}

// A VM in a warm jail of the real jailer boots, pauses, resumes and snapshots; its snapshot
// restores into a jail of its own; and nothing is left.
func TestRealWarmJail(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	base := spec.Jailer.ChrootBase
	limits := false
	if l, err := jailer.DetectCgroups(); err == nil && l.Version() == 1 {
		// cgroup v1: the warm jail's cgroups take the VM's name too.
		spec.Jailer.MemoryLimit, spec.Jailer.CPUQuota, limits = 1<<30, 0.5, true
	} else {
		t.Log("not a cgroup v1 host: warm jails without cgroup limits only")
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	if err := mgr.WarmJails(ctx, spec, 1); err != nil {
		t.Fatal(err)
	}
	spec.Name = "real-warm"
	m := start(t, mgr, spec)
	if limits {
		b, err := os.ReadFile(filepath.Join(root, "vms", spec.Name, rundir.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		var st rundir.State
		json.Unmarshal(b, &st)
		if st.Jail == nil || len(st.Jail.CgroupDirs) == 0 {
			t.Fatalf("no cgroups recorded for a jail with limits: %+v", st.Jail)
		}
		for _, d := range st.Jail.CgroupDirs {
			procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if filepath.Base(d) != spec.Name || err != nil || !slices.Contains(strings.Fields(string(procs)), strconv.Itoa(m.PID())) {
				t.Errorf("cgroup %s: procs %q (%v), want the vm's name and firecracker pid %d", d, procs, err, m.PID())
			}
		}
	}
	if id := runIDOf(t, m.PID()); !jailer.IsWarmID(id) {
		t.Fatalf("firecracker runs with --id %q, not in a warm jail", id)
	}
	if ns := strings.Fields(procStatus(t, m.PID(), "NSpid")); ns[len(ns)-1] != "1" {
		t.Errorf("NSpid %v: not PID 1 of its namespace", ns)
	}
	if caps := procStatus(t, m.PID(), "CapEff"); caps != "0000000000000000" {
		t.Errorf("CapEff %s: firecracker has capabilities", caps)
	}
	// rm -f without a record finds the VM's firecracker by its jail, renamed for the VM.
	uid, _ := strconv.Atoi(strings.Fields(procStatus(t, m.PID(), "Uid"))[0])
	if found := jailer.FindJailed(uint32(uid), spec.Name); len(found) != 1 || found[0].PID != m.PID() {
		t.Errorf("FindJailed(%d, %s) = %+v, want firecracker pid %d", uid, spec.Name, found, m.PID())
	}
	if !jailer.Running(spec.Name) {
		t.Errorf("Running(%s) = false for a VM in a taken warm jail", spec.Name)
	}
	jailedLifecycle(t, ctx, mgr, m)
	drainWarm(t, ctx, mgr, spec, base, root)
}

// An owner SIGKILLed at any step of taking a warm jail leaves nothing that the next manager
// does not reap: no chroot (under either name), uid lease or VM directory.
func TestWarmJailsOwnerKilledWhileTaking(t *testing.T) {
	testutil.RequiresRoot(t)
	bin := fakeJailPair(t)
	for _, step := range []string{"linked", "recorded", "transferred", "warm-dir-removed", "renamed"} {
		t.Run(step, func(t *testing.T) {
			root := testRoot(t)
			spec := guestSpec(guestKernel(t), testguest.ModeCounter)
			spec.Name = "warm-crash"
			base := shortJailBase(t)
			spec.Jailer = &JailerSpec{ChrootBase: base}
			if err := crashTaking(t, root, bin, spec, step); err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("owner: %v, want killed at step %s", err, step)
			}
			mgr := newManager(t, root, bin)
			if _, err := mgr.Reap(t.Context()); err != nil {
				t.Errorf("reap: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("vm directories left: %v", names)
			}
			jailLeft(t, base, root)
		})
	}
}

// A firecracker binary replaced since the warm jails were made (an upgrade that keeps its
// path and version string) is the one a start runs: the stale warm jails are not taken.
func TestWarmJailsFirecrackerReplaced(t *testing.T) {
	mgr, root, bin, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, _ := warmUp(t, ctx, mgr, base, 1)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin+".new", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	spec.Name = "after-upgrade"
	m := start(t, mgr, spec)
	if id := runIDOf(t, m.PID()); id != spec.Name {
		t.Errorf("a start after firecracker was replaced ran in a warm jail of the old one (--id %q)", id)
	}
	killAndDrain(t, ctx, mgr, m, spec, base, root)
}

// A kernel the jail's uid may not read is copied into a taken warm jail, under its new name:
// the copy is written through the jail's renamed directory, not the warm jail's old path.
func TestWarmJailsCopiedKernel(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, warm := warmUp(t, ctx, mgr, base, 1)
	b, err := os.ReadFile(spec.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	spec.Kernel = filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(spec.Kernel, b, 0o600); err != nil { // not world-readable: copied
		t.Fatal(err)
	}
	spec.Name = "private-kernel"
	m := start(t, mgr, spec)
	if id := runIDOf(t, m.PID()); !slices.Contains(warm, id) {
		t.Errorf("firecracker runs with --id %q, not in the warm jail %v", id, warm)
	}
	followConsole(t, m).waitFor(t, testguest.TickLine(0))
	killAndDrain(t, ctx, mgr, m, spec, base, root)
}

// Close ends a WarmJails call whose jail never comes up (its firecracker never listens), and
// the call then fails: neither waits on the caller's context alone.
func TestWarmJailsCloseEndsMaking(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	t.Setenv(fakefc.EnvMode, fakefc.ModeNoSocket)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Jailer = &JailerSpec{ChrootBase: base}
	// A context of the caller's that never ends while the test runs (ended at cleanup, before
	// the manager's own Close, so that a failing test does not hang).
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	warmErr := make(chan error, 1)
	go func() { warmErr <- mgr.WarmJails(ctx, spec, 1) }()
	for deadline := time.Now().Add(waitLong); len(warmIDs(t, base)) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- mgr.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close still waits for a warm jail whose firecracker never listens")
	}
	if err := <-warmErr; err == nil {
		t.Error("WarmJails succeeded though the manager was closed before its jail listened")
	}
	jailLeft(t, base, root)
}

// crashTaking runs an owner that makes a warm jail for spec and starts it, to be SIGKILLed
// after step of the take, and waits until no jail under the spec's chroot base runs. It
// returns how the owner ended.
func crashTaking(t *testing.T, root, bin string, spec MachineSpec, step string) error {
	t.Helper()
	b, _ := json.Marshal(ownerArgs{Root: root, Binary: bin, Spec: spec, Warm: 1, CrashAt: step})
	cmd := exec.Command(testutil.Link(t, "smartvm-owner"), string(b))
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	deadline := time.Now().Add(waitLong)
	for running := true; running && time.Now().Before(deadline); {
		running = false
		ents, _ := os.ReadDir(filepath.Join(spec.Jailer.ChrootBase, "firecracker"))
		for _, e := range ents {
			running = running || jailer.Running(e.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// A jail directory of the VM's name that is not this start's (another runtime directory's)
// is never recorded as the VM's: a crash while taking a warm jail leaves it to its owner.
func TestWarmJailsForeignChroot(t *testing.T) {
	mgr, root, bin, base := newJailManager(t)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name, spec.Jailer = "taken-name", &JailerSpec{ChrootBase: base}
	foreign, err := jailer.Prepare(jailer.Config{ID: spec.Name, ExecFile: bin, UID: 4747, GID: 4747, ChrootBase: spec.Jailer.ChrootBase})
	if err != nil {
		t.Fatal(err)
	}
	err = foreign.Mkdir("run")
	foreign.Close()
	if err != nil {
		t.Fatal(err)
	}
	crashTaking(t, root, bin, spec, "recorded")
	if _, err := mgr.Reap(t.Context()); err != nil {
		t.Errorf("reap: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Jailer.ChrootBase, "firecracker", spec.Name, "root", "run")); err != nil {
		t.Errorf("another's jail of the vm's name was removed: %v", err)
	}
	if ids := warmIDs(t, spec.Jailer.ChrootBase); len(ids) != 0 {
		t.Errorf("warm jails left: %v", ids)
	}
}

// WarmJails stops waiting for a refill in the background when its context ends.
func TestWarmJailsWaitEndsWithContext(t *testing.T) {
	mgr, _, _, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, _ := warmUp(t, ctx, mgr, base, 1)
	t.Setenv(fakefc.EnvMode, fakefc.ModeNoSocket) // the refill's firecracker never listens
	spec.Name = "took-warm"
	m := start(t, mgr, spec)
	defer m.Close()
	if ids := waitWarm(t, base, 1); len(ids) != 1 { // the refill is making its jail
		t.Fatalf("warm jails %v: no refill", ids)
	}
	short, cancelShort := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancelShort()
	done := make(chan error, 1)
	go func() { done <- mgr.WarmJails(short, spec, 1) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WarmJails while a refill hangs: %v, want its context's end", err)
		}
	case <-time.After(waitLong):
		t.Fatal("WarmJails waits for a background refill past its context")
	}
}

// A warm jail records only what firecracker was started with: the template's devices (here
// its vsock CID) are the taking VM's, so they are not in use while the jail waits.
func TestWarmJailsRecordNoDevices(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Jailer = &JailerSpec{ChrootBase: base}
	spec.Vsock = &VsockSpec{CID: 3}
	if err := mgr.WarmJails(ctx, spec, 1); err != nil {
		t.Fatal(err)
	}
	if cid, err := mgr.FreeVsockCID(ctx); err != nil || cid != 3 {
		t.Errorf("FreeVsockCID = %d, %v with a warm jail of a template with CID 3: want 3", cid, err)
	}
	ids := warmIDs(t, base)
	if len(ids) != 1 {
		t.Fatalf("warm jails %v", ids)
	}
	b, err := os.ReadFile(filepath.Join(root, "vms", ids[0], rundir.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st rundir.State
	var recorded MachineSpec
	if json.Unmarshal(b, &st) != nil || json.Unmarshal(st.Spec, &recorded) != nil || recorded.Kernel != "" || recorded.Vsock != nil || recorded.Jailer == nil {
		t.Errorf("a warm jail's recorded spec: %s", st.Spec)
	}
	if err := mgr.WarmJails(ctx, spec, 0); err != nil {
		t.Fatal(err)
	}
}

// A warm jail whose firecracker dies while it waits is removed at once, with all it holds,
// and replaced.
func TestWarmJailDiesWaiting(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, ids := warmUp(t, ctx, mgr, base, 1)
	b, err := os.ReadFile(filepath.Join(root, "vms", ids[0], rundir.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st rundir.State
	if err := json.Unmarshal(b, &st); err != nil || st.PID == 0 {
		t.Fatalf("warm jail's state: %s (%v)", b, err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	var now []string
	for time.Now().Before(deadline) {
		if now = warmIDs(t, base); len(now) == 1 && now[0] != ids[0] && jailer.Running(now[0]) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(now) != 1 || now[0] == ids[0] {
		t.Fatalf("warm jails %v after %s's firecracker died: want it replaced", now, ids[0])
	}
	if _, err := os.Stat(filepath.Join(root, "vms", ids[0])); !os.IsNotExist(err) {
		t.Errorf("the dead warm jail's directory is left: %v", err)
	}
	drainWarm(t, ctx, mgr, spec, base, root)
}

// A warm jail is no VM: by its name, another manager can neither attach to it, describe it,
// read its console nor remove it, and it keeps waiting.
func TestWarmJailsNotVMs(t *testing.T) {
	mgr, root, bin, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, ids := warmUp(t, ctx, mgr, base, 1)
	other := newManager(t, root, bin)
	id := ids[0]
	_, attachErr := other.Attach(ctx, id)
	_, infoErr := other.Info(ctx, id)
	_, consoleErr := other.ConsoleLog(id)
	_, forceErr := other.ForceRemove(ctx, id)
	for what, err := range map[string]error{
		"Attach": attachErr, "Info": infoErr, "ConsoleLog": consoleErr,
		"Remove": other.Remove(ctx, id), "ForceRemove": forceErr,
	} {
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "warm jail") {
			t.Errorf("%s of a warm jail: %v, want ErrNotFound naming a warm jail", what, err)
		}
	}
	if now := warmIDs(t, base); !slices.Equal(now, ids) || !jailer.Running(id) {
		t.Errorf("the warm jail did not survive: %v (running: %v)", now, jailer.Running(id))
	}
	drainWarm(t, ctx, mgr, spec, base, root)
}

// A replacement that cannot be made at first is made once it can, with no start to ask for
// it: here the uid range has one uid, which the VM that took the warm jail holds until it ends.
func TestWarmJailsRefillRetried(t *testing.T) {
	defer func(d time.Duration) { warmRetry = d }(warmRetry)
	warmRetry = 20 * time.Millisecond
	mgr, root, _, base := newJailManager(t, WithJailerIDRange(123400, 1))
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, warm := warmUp(t, ctx, mgr, base, 1)
	spec.Name = "took-warm"
	m := start(t, mgr, spec)
	if id := runIDOf(t, m.PID()); id != warm[0] {
		t.Fatalf("firecracker runs with --id %q, not the warm jail's %q", id, warm[0])
	}
	time.Sleep(10 * warmRetry) // the refill fails, and is tried again, while the VM holds the uid
	if ids := warmIDs(t, base); len(ids) != 0 {
		t.Fatalf("a warm jail was made while the only uid was the vm's: %v", ids)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if ids := waitWarm(t, base, 1); len(ids) != 1 {
		t.Fatalf("no warm jail was made once the uid was free: %v", ids)
	}
	drainWarm(t, ctx, mgr, spec, base, root)
}

// A restore takes a warm jail too, under its own name or as a clone: a template snapshot's
// clones start in jails made ahead, and count on.
func TestWarmJailsServeRestores(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	spec, _ := warmUp(t, ctx, mgr, base, 2)
	m, snap := tickAndSnapshot(t, ctx, mgr, spec)
	waitReady(t, mgr, 2)
	clones := warmClones(t, ctx, mgr, snap)
	for _, c := range clones {
		if !strings.HasPrefix(c.APISocket(), filepath.Join(base, "firecracker", c.Name())+"/") {
			t.Errorf("clone %s's API socket %s is not in the jail renamed for it", c.Name(), c.APISocket())
		}
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	wait(t, m)
	waitReady(t, mgr, 1)
	r, err := mgr.Restore(ctx, snap, RestoreSpec{}) // under its own name
	if err != nil {
		t.Fatal(err)
	}
	if id := runIDOf(t, r.PID()); !jailer.IsWarmID(id) {
		t.Errorf("the restore runs with --id %q: not in a warm jail", id)
	}
	for _, vm := range append(clones, r) {
		if err := vm.Kill(); err != nil {
			t.Fatal(err)
		}
		wait(t, vm)
	}
	drainWarm(t, ctx, mgr, spec, base, root)
}

// waitReady waits until mgr's pool has n warm jails ready (a directory under the chroot base
// may be a jail still being made).
func waitReady(t *testing.T, mgr *Manager, n int) {
	t.Helper()
	for deadline := time.Now().Add(waitLong); ; time.Sleep(10 * time.Millisecond) {
		mgr.warm.mu.Lock()
		ready := len(mgr.warm.ready)
		mgr.warm.mu.Unlock()
		if ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d warm jails ready, want %d", ready, n)
		}
	}
}

// TestRealWarmJailClones is TestWarmJailsServeRestores with the real jailer and firecracker of
// one release: clones of a jailed snapshot start in warm jails and count on.
func TestRealWarmJailClones(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	m, snap := tickAndSnapshot(t, ctx, mgr, spec)
	if err := mgr.WarmJails(ctx, spec, 2); err != nil {
		t.Fatal(err)
	}
	clones := warmClones(t, ctx, mgr, snap)
	for _, c := range clones {
		con := followConsole(t, c)
		if x, y := con.nextTick(t), con.nextTick(t); y <= x {
			t.Errorf("clone %s: tick %d after %d", c.Name(), y, x)
		}
	}
	for _, vm := range append(clones, m) {
		if err := vm.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Close()
	}
	drainWarm(t, ctx, mgr, spec, spec.Jailer.ChrootBase, root)
}

// tickAndSnapshot starts spec, a counter guest, as "tmpl", and snapshots it once it ticks.
func tickAndSnapshot(t *testing.T, ctx context.Context, mgr *Manager, spec MachineSpec) (*Machine, Snapshot) {
	t.Helper()
	spec.Name = "tmpl"
	m := start(t, mgr, spec)
	followConsole(t, m).nextTick(t)
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	return m, snap
}

// warmClones starts two clones of snap and checks that each took a warm jail.
func warmClones(t *testing.T, ctx context.Context, mgr *Manager, snap Snapshot) []*Machine {
	t.Helper()
	clones, err := mgr.Clone(ctx, snap, CloneSpec{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clones {
		if id := runIDOf(t, c.PID()); !jailer.IsWarmID(id) {
			t.Errorf("clone %s runs with --id %q: not in a warm jail", c.Name(), id)
		}
	}
	return clones
}
