package smartvm

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// fakeJailPair returns the fake firecracker, with the fake jailer beside it (where a manager
// looks for the jailer by default).
func fakeJailPair(t *testing.T) string {
	t.Helper()
	fc := testutil.HardLink(t, "firecracker")
	if err := linkBeside(fc, "jailer"); err != nil {
		t.Fatal(err)
	}
	return fc
}

// linkBeside hard-links file under name in its own directory.
func linkBeside(file, name string) error {
	return os.Link(file, filepath.Join(filepath.Dir(file), name))
}

func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.Join(strings.Fields(rest), " ")
		}
	}
	return ""
}

// jailLeft fails the test if anything of a jail is left: files under the chroot base, uid
// leases.
func jailLeft(t *testing.T, base, root string) {
	t.Helper()
	ents, _ := os.ReadDir(base)
	if ents = slices.DeleteFunc(ents, func(e os.DirEntry) bool { return e.Name() == ".acl.lock" }); len(ents) != 0 { // the lock stays
		t.Errorf("left under the chroot base %s: %v", base, ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, jailIDsDir)); len(ents) > 1 { // the lock stays
		t.Errorf("uid leases left: %v", ents)
	}
}

func TestJailedVM(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	mgr := newManager(t, root, bin)
	base := filepath.Join(t.TempDir(), "jailer")
	src := filepath.Dir(base) // the chroot base's filesystem
	kernel := guestKernel(t)
	disk := filepath.Join(src, "disk.img")
	os.WriteFile(disk, make([]byte, 4096), 0o640)
	os.Chown(disk, 1234, 1234)
	rootfs := filepath.Join(src, "rootfs.img")
	os.WriteFile(rootfs, make([]byte, 8192), 0o644)
	spec := guestSpec(kernel, "counter")
	spec.Name = "jailed"
	spec.Metrics = true
	spec.Vsock = &VsockSpec{CID: 3}
	spec.Drives = []DriveSpec{{Path: rootfs, Root: true}, {ID: "data", Path: disk, Persistent: true}}
	spec.Jailer = &JailerSpec{ChrootBase: base}
	m := start(t, mgr, spec)

	chroot := filepath.Join(base, "firecracker", "jailed", "root")
	if got := m.APISocket(); got != filepath.Join(chroot, "run", "api.sock") {
		t.Errorf("API socket %s, want the host path of the jail's", got)
	}
	uid := procStatus(t, m.PID(), "Uid")
	if n, _ := strconv.Atoi(strings.Fields(uid)[0]); n < jailer.DefaultFirstID {
		t.Errorf("firecracker runs as %s, not a leased jail uid", uid)
	}
	if ns := strings.Fields(procStatus(t, m.PID(), "NSpid")); ns[len(ns)-1] != "1" {
		t.Errorf("NSpid %v: not PID 1 of its namespace", ns)
	}
	var st syscall.Stat_t
	syscall.Stat(disk, &st)
	if strconv.Itoa(int(st.Uid)) != strings.Fields(uid)[0] {
		t.Errorf("persistent drive is owned by %d while the jail runs", st.Uid)
	}
	b, err := os.ReadFile(filepath.Join(root, "vms", "jailed", rundir.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var state rundir.State
	json.Unmarshal(b, &state)
	if state.Jail == nil || state.Jail.Chroot != chroot || state.Jail.APISocket != "/run/api.sock" {
		t.Errorf("state.json's jail: %+v", state.Jail)
	}
	// Another process's view: the jailed VM is listed and adoptable through its host paths.
	other := newManager(t, root, bin)
	infos, err := other.List(t.Context())
	if err != nil || len(infos) != 1 || infos[0].State != StateRunning || infos[0].APISocket != m.APISocket() {
		t.Errorf("List = %+v, %v", infos, err)
	}
	if inside, ok := (jailer.Chroot{Root: chroot}).Inside(m.LogPath()); !ok || inside != "/firecracker.log" {
		t.Errorf("log %s is not the jail's", m.LogPath())
	}
	if b, _ := os.ReadFile(m.LogPath()); !strings.Contains(string(b), "Running Firecracker") {
		t.Errorf("log: %q", b)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	syscall.Stat(disk, &st)
	if st.Uid != 1234 {
		t.Errorf("persistent drive not given back: uid %d", st.Uid)
	}
	jailLeft(t, base, root)
}

// The owner's SIGKILL ends the jailed firecracker at once (the guard's namespace goes with
// it), and the next manager reaps the jail. A Detached VM's jail outlives its owner, and the
// process that ends it removes the jail and its guard.
func TestJailedOwnerKilled(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	base := filepath.Join(t.TempDir(), "jailer")
	spec := guestSpec(guestKernel(t), "counter")
	spec.Name = "jailed-owner"
	spec.Jailer = &JailerSpec{ChrootBase: base}
	for _, detached := range []bool{false, true} {
		cmd, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Detached: detached})
		st, err := proc.StartTime(pid)
		if err != nil {
			t.Fatal(err)
		}
		jail := killGuardAtEnd(t, filepath.Join(root, "vms", spec.Name, rundir.StateFile))
		killOwner(t, cmd)
		if detached {
			time.Sleep(100 * time.Millisecond)
			if alive, _ := proc.Alive(pid, st); !alive {
				t.Fatal("a detached jailed VM died with its owner")
			}
			mgr := newManager(t, root, bin)
			ctx, cancel := context.WithTimeout(t.Context(), waitLong)
			m, err := mgr.Attach(ctx, spec.Name)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			err = errors.Join(m.Kill(), m.Close())
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			testutil.GoneWithin(t, jail.GuardPID, jail.GuardStart, time.Second) // the reap killed the guard
			jailLeft(t, base, root)
			continue
		}
		testutil.GoneWithin(t, pid, st, time.Second)
		newManager(t, root, bin) // reaps
		jailLeft(t, base, root)
	}
}

func TestJailedBadInput(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	base := filepath.Join(t.TempDir(), "jailer")
	kernel := guestKernel(t)
	startErr := func(mgr *Manager, js JailerSpec, drives ...DriveSpec) error {
		spec := guestSpec(kernel, "counter")
		spec.Name = "bad"
		spec.Drives = drives
		spec.Jailer = &js
		ctx, cancel := context.WithTimeout(t.Context(), waitLong)
		defer cancel()
		m, err := mgr.Start(ctx, spec)
		if err == nil {
			m.Close()
		}
		return err
	}
	mgr := newManager(t, root, bin)
	if err := startErr(mgr, JailerSpec{ChrootBase: base, GID: 5}); err == nil || !strings.Contains(err.Error(), "uid 0 gid 5") {
		t.Errorf("uid 0: %v", err)
	}
	shm, err := os.CreateTemp("/dev/shm", "jail-drive")
	if err == nil {
		defer os.Remove(shm.Name())
		shm.Close()
		err := startErr(mgr, JailerSpec{ChrootBase: base}, DriveSpec{Path: shm.Name(), Persistent: true})
		if !errors.Is(err, jailer.ErrOtherFilesystem) || !strings.Contains(err.Error(), "keep it on the chroot's filesystem") {
			t.Errorf("persistent drive elsewhere: %v", err)
		}
	}
	jailLeft(t, base, root)

	noJailer := newManager(t, root, testutil.Link(t, "firecracker"))
	if err := startErr(noJailer, JailerSpec{ChrootBase: base}); !errors.Is(err, ErrJailer) {
		t.Errorf("no jailer: %v", err)
	}
	other := filepath.Join(t.TempDir(), "jailer")
	os.WriteFile(other, []byte("#!/bin/sh\necho Jailer v1.10.1\n"), 0o755)
	mismatch := newManager(t, root, bin, WithJailerBinary(other))
	if err := startErr(mismatch, JailerSpec{ChrootBase: base}); !errors.Is(err, jailer.ErrVersionMismatch) {
		t.Errorf("jailer of another release: %v", err)
	}
	if l, err := jailer.DetectCgroups(); err == nil && !l.Has(2, "memory") {
		if err := startErr(mgr, JailerSpec{ChrootBase: base, CgroupVersion: 2, MemoryLimit: 1 << 30}); !errors.Is(err, jailer.ErrCgroupUnsupported) {
			t.Errorf("memory limit on a cgroup2 without memory (%s): %v", l, err)
		}
	}
	jailLeft(t, base, root)
}

// A jailed VM's snapshot lands in the caller's directory as the caller's private files, and
// restores into a jail again.
func TestJailedSnapshotRestore(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	mgr := newManager(t, root, bin)
	base := filepath.Join(t.TempDir(), "jailer")
	data := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(data, make([]byte, 4096), 0o644)
	spec := guestSpec(guestKernel(t), "counter")
	spec.Name = "jailed-snap"
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	spec.Jailer = &JailerSpec{ChrootBase: base}
	m := start(t, mgr, spec)
	dir := filepath.Join(t.TempDir(), "snap")
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	snap, err := m.Snapshot(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vm.state", "vm.mem"} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, f), &st); err != nil || st.Uid != 0 || st.Mode&0o777 != 0o600 {
			t.Errorf("%s: uid %d mode %o, %v", f, st.Uid, st.Mode&0o777, err)
		}
	}
	r := killAndRestore(t, ctx, mgr, m, snap)
	if !strings.HasPrefix(r.APISocket(), base+"/") {
		t.Errorf("restored VM's socket %s is not in a jail", r.APISocket())
	}
	if n, _ := strconv.Atoi(strings.Fields(procStatus(t, r.PID(), "Uid"))[0]); n < jailer.DefaultFirstID {
		t.Errorf("restored firecracker runs as uid %d", n)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	for _, f := range []string{"vm.state", "vm.mem"} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, f), &st); err != nil || st.Uid != 0 {
			t.Errorf("%s after the restored VM ended: uid %d, %v", f, st.Uid, err)
		}
	}
	jailLeft(t, base, root)
}

// TestRealJailedLifecycle boots the counter guest through the real jailer (root, KVM, and
// SMARTVM_JAILER_BIN with SMARTVM_FIRECRACKER_BIN of the same release): pause and resume,
// a snapshot and its restore in a jail, a graceful stop, and nothing left.
func TestRealJailedLifecycle(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	base := spec.Jailer.ChrootBase
	spec.Name = "real-jailed"
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	jailedLifecycle(t, ctx, mgr, m)
	jailLeft(t, base, root)
}

// jailedLifecycle checks that m, a jailed counter guest, ticks, pauses and resumes, and
// snapshots; the snapshot restores in its place, ticks on and stops.
func jailedLifecycle(t *testing.T, ctx context.Context, mgr *Manager, m *Machine) {
	t.Helper()
	followConsole(t, m).waitFor(t, testguest.TickLine(0))
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	r := killAndRestore(t, ctx, mgr, m, snap)
	followConsole(t, r).nextTick(t)
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	r.Close()
}

// realJailed returns a manager of a fresh runtime root with the real jailer and firecracker of
// one release (skipping the test without them or KVM), and a spec of the counter guest jailed
// under a chroot base of its own, short enough for any jail's API socket path.
func realJailed(t *testing.T) (*Manager, string, MachineSpec) {
	t.Helper()
	jailerBin, _ := testutil.JailerBins(t)
	bin := testutil.FirecrackerBin(t) // skips without /dev/kvm: these tests boot a guest
	root := testRoot(t)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Jailer = &JailerSpec{ChrootBase: shortJailBase(t)}
	return newManager(t, root, bin, WithJailerBinary(jailerBin)), root, spec
}

// killAndRestore kills m and restores snap, its snapshot, in its place.
func killAndRestore(t *testing.T, ctx context.Context, mgr *Manager, m *Machine, snap Snapshot) *Machine {
	t.Helper()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	r, err := mgr.Restore(ctx, snap, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRealJailedConfigure runs Start through the real jailer and firecracker on a host
// without KVM: firecracker, in its jail, takes every configuration request (the kernel, an
// ephemeral, a read-only and a persistent drive, the logger, metrics and vsock, all by their
// paths in the chroot) and fails only at InstanceStart, which needs /dev/kvm. Nothing is left
// afterwards: process, chroot, uid lease, cgroups, and the persistent drive is given back.
// With KVM, TestRealJailedLifecycle boots instead.
func TestRealJailedConfigure(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	if _, err := os.Stat("/dev/kvm"); err == nil {
		t.Skip("this host has /dev/kvm: TestRealJailedLifecycle boots a jailed guest instead")
	}
	testutil.CheckLeaks(t)
	root := testRoot(t)
	mgr := newManager(t, root, fc, WithJailerBinary(jailerBin))
	base := filepath.Join(t.TempDir(), "jailer")
	src := filepath.Dir(base)
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, make([]byte, 1<<20), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	persistent := mk("persistent.img", 0o600)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "real-jail-config"
	spec.Metrics = true
	spec.Vsock = &VsockSpec{CID: 3}
	spec.Drives = []DriveSpec{{Path: mk("root.img", 0o644), Root: true}, {ID: "ro", Path: mk("ro.img", 0o600), ReadOnly: true},
		{ID: "data", Path: persistent, Persistent: true}}
	spec.Jailer = &JailerSpec{ChrootBase: base, MemoryLimit: 1 << 30, CPUQuota: 0.5}
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	m, err := mgr.Start(ctx, spec)
	if err == nil {
		m.Close()
		t.Fatal("started without KVM")
	}
	var se *StartError
	if !errors.As(err, &se) || se.Step != "InstanceStart" {
		t.Fatalf("Start = %v, want a failure at InstanceStart (every earlier request taken in the jail)", err)
	}
	t.Logf("as expected without KVM: %v", err)
	var st syscall.Stat_t
	if syscall.Stat(persistent, &st); st.Uid != 0 {
		t.Errorf("persistent drive not given back: uid %d", st.Uid)
	}
	jailLeft(t, base, root)
	if l, err := jailer.DetectCgroups(); err == nil {
		for _, c := range []string{"cpu", "memory"} {
			if mnt := l.Mount(l.Version(), c); mnt != "" {
				if _, err := os.Stat(filepath.Join(mnt, "firecracker-v1.7.0", spec.Name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("cgroup %s left: %v", c, err)
				}
			}
		}
	}
}

// A jailed VM's vsock works both ways through its socket in the chroot: a dial from the host,
// and the guest's calls to a host listener (whose socket the jailed firecracker connects to).
func TestJailedVsock(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	mgr := newManager(t, root, fakeJailPair(t))
	base := filepath.Join(t.TempDir(), "jailer")
	spec := vsockGuest(guestKernel(t))
	spec.Jailer = &JailerSpec{ChrootBase: base}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	c, err := m.DialVsock(ctx, testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "to the jailed guest")
	c.Close()
	ln, err := m.ListenVsock(testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	// The jailed firecracker can connect only to a socket the jail's uid may write.
	ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(5 * time.Second))
	c, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "from the jailed guest")
	c.Close()
	ln.Close()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	jailLeft(t, base, root)
}

// A jail record in state.json is data: reaping and snapshots use it only when it is the jail
// smartvm makes for the VM under its spec.
func TestRecordedJailIsChecked(t *testing.T) {
	mgr := newManager(t, testRoot(t), testutil.Link(t, "firecracker"))
	ctx := context.Background()
	state := func(js *JailerSpec, j rundir.Jail) *rundir.State {
		b, _ := json.Marshal(MachineSpec{Name: "vm1", Jailer: js})
		return &rundir.State{Spec: b, Jail: &j}
	}
	good := rundir.Jail{UID: 4000, GID: 4000, Chroot: "/srv/jailer/firecracker/vm1/root", ExecName: "firecracker", APISocket: "/run/api.sock"}
	if _, err := mgr.recordedJail(ctx, "vm1", state(&JailerSpec{UID: 4000, GID: 4000}, good)); err != nil {
		t.Fatalf("the jail the spec makes: %v", err)
	}
	ids, err := mgr.jailIDs()
	if err != nil {
		t.Fatal(err)
	}
	other, err := ids.Allocate(ctx, "other")
	ids.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A hand-over from a warm jail accepts the warm jail's lease, never another VM's.
	taken := good
	taken.UID, taken.GID, taken.WarmID = other, other, jailer.NewWarmID()
	for what, st := range map[string]*rundir.State{
		"a warm jail's, the uid another vm's": state(&JailerSpec{}, taken),
		"no jailer in the spec":               state(nil, good),
		"another chroot base": state(&JailerSpec{UID: 4000, GID: 4000}, func() rundir.Jail {
			j := good
			j.Chroot, j.ExecName = "/home/alice/root", "home"
			return j
		}()),
		"another uid":      state(&JailerSpec{UID: 4000, GID: 4000}, func() rundir.Jail { j := good; j.UID = 1000; return j }()),
		"a uid not leased": state(&JailerSpec{}, good),
	} {
		if _, err := mgr.recordedJail(ctx, "vm1", st); err == nil || !strings.Contains(err.Error(), "left alone") {
			t.Errorf("%s: %v, want a refusal that leaves the jail alone", what, err)
		}
	}
	// A record that names, as the warm jail its jail came from, one a live process holds
	// never reaches it, even with a lease of its own.
	live := jailer.NewWarmID()
	d, err := mgr.root.Create(ctx, live)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Remove(ctx)
	if ids, err = mgr.jailIDs(); err != nil {
		t.Fatal(err)
	}
	own, err := ids.Allocate(ctx, "vm1")
	ids.Close()
	if err != nil {
		t.Fatal(err)
	}
	claim := good
	claim.UID, claim.GID, claim.WarmID = own, own, live
	if _, err := mgr.recordedJail(ctx, "vm1", state(&JailerSpec{}, claim)); err == nil || !strings.Contains(err.Error(), "left alone") {
		t.Errorf("a record naming a live warm jail: %v, want a refusal that leaves the jail alone", err)
	}
}

// TestJailerProbedOnce starts jailed VMs through a jailer that counts its version probes:
// the manager probes it once, as it does firecracker, and again only once the binary
// changes. An owned jail's firecracker stays in this process's session (its own process
// group), as an unjailed one does.
func TestJailerProbedOnce(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	fc := fakeJailPair(t)
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	script := filepath.Join(dir, "jailer")
	body := "#!/bin/sh\n[ \"$1\" = --version ] && echo x >> " + count + "\nexec " + filepath.Join(filepath.Dir(fc), "jailer") + " \"$@\"\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	mgr := newManager(t, root, fc, WithJailerBinary(script))
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	spec.Jailer = &JailerSpec{ChrootBase: filepath.Join(t.TempDir(), "jailer")}
	probes := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "x")
	}
	for i := range 2 {
		m := start(t, mgr, spec)
		if i == 0 {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(m.PID()) + "/stat")
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
			if sid, _ := unix.Getsid(0); f[3] != strconv.Itoa(sid) {
				t.Errorf("jailed firecracker in session %s, want this process's %d", f[3], sid)
			}
		}
		m.Kill()
		m.Close()
	}
	if n := probes(); n != 1 {
		t.Fatalf("%d jailer version probes for 2 jailed starts", n)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(script, later, later)
	m := start(t, mgr, spec)
	m.Kill()
	m.Close()
	if n := probes(); n != 2 {
		t.Fatalf("%d jailer version probes after the binary changed", n)
	}
}

// A jailed VM whose state.json is corrupt is found by its jail instead (the uid leased to its
// name, --id, its chroot as root): ForceRemove kills its firecracker and guard and removes the
// chroot, cgroups and lease.
func TestJailedCorruptStateIsRemovable(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	base := filepath.Join(t.TempDir(), "jailer")
	spec := guestSpec(guestKernel(t), "counter")
	spec.Name = "jailed-corrupt"
	spec.Jailer = &JailerSpec{ChrootBase: base}
	cmd, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Detached: true})
	st, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	stPath := filepath.Join(root, "vms", spec.Name, rundir.StateFile)
	jail := killGuardAtEnd(t, stPath)
	killOwner(t, cmd)
	os.WriteFile(stPath, []byte(`{"version":1,"name":"jailed-corrupt","pid":1,`), 0o600)
	mgr := newManager(t, root, bin)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	killed, err := mgr.ForceRemove(ctx, spec.Name)
	if err != nil || !slices.Contains(killed, pid) {
		t.Fatalf("ForceRemove: %v %v, want %d killed", killed, err, pid)
	}
	testutil.GoneWithin(t, pid, st, time.Second)
	testutil.GoneWithin(t, jail.GuardPID, jail.GuardStart, time.Second)
	jailLeft(t, base, root)
	if infos, _ := mgr.List(ctx); len(infos) != 0 {
		t.Errorf("left listed: %+v", infos)
	}
}

// FindJailed proves a process is the jail's: another name, or another uid, finds nothing.
func TestFindJailedNeedsItsProof(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	mgr := newManager(t, root, bin)
	spec := guestSpec(guestKernel(t), "counter")
	spec.Name = "jailed-find"
	base := filepath.Join(t.TempDir(), "jailer")
	spec.Jailer = &JailerSpec{ChrootBase: base}
	m := start(t, mgr, spec)
	uid, _ := strconv.Atoi(strings.Fields(procStatus(t, m.PID(), "Uid"))[0])
	found := jailer.FindJailed(uint32(uid), spec.Name)
	if len(found) != 1 || found[0].PID != m.PID() || found[0].Config.Chroot().Root != filepath.Join(base, "firecracker", spec.Name, "root") {
		t.Errorf("FindJailed: %+v, want pid %d in its chroot", found, m.PID())
	}
	if f := jailer.FindJailed(uint32(uid), "jailed-other"); len(f) != 0 {
		t.Errorf("another name: %+v", f)
	}
	if f := jailer.FindJailed(uint32(uid)+1, spec.Name); len(f) != 0 {
		t.Errorf("another uid: %+v", f)
	}
	if err := errors.Join(m.Kill(), m.Close()); err != nil {
		t.Fatal(err)
	}
}

// TestRealJailedRemoveCorrupt: the real jailer's firecracker of a VM whose
// state.json is corrupt is found by its jail; rm -f kills it and leaves no chroot, lease or
// cgroup.
func TestRealJailedRemoveCorrupt(t *testing.T) {
	mgr, root, spec := realJailed(t)
	base := spec.Jailer.ChrootBase
	spec.Name = "real-rmf"
	spec.Jailer.MemoryLimit, spec.Jailer.CPUQuota = 1<<30, 0.5
	m := start(t, mgr, spec, Detached())
	pid := m.PID()
	m.Release()
	stPath := filepath.Join(root, "vms", spec.Name, rundir.StateFile)
	killGuardAtEnd(t, stPath)
	os.WriteFile(stPath, []byte(`{"version":1,`), 0o600)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	// Its pivoted root shows as "/" in /proc/<pid>/root: reaping still finds it by its jail.
	if _, err := mgr.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Dir(stPath)); err != nil {
		t.Fatalf("reaped while its jailed firecracker runs: %v", err)
	}
	killed, err := mgr.ForceRemove(ctx, spec.Name)
	if err != nil || !slices.Contains(killed, pid) {
		t.Fatalf("ForceRemove: %v %v, want %d killed", killed, err, pid)
	}
	if !processGone(pid, 5*time.Second) {
		t.Error("firecracker still runs")
	}
	jailLeft(t, base, root)
	if l, err := jailer.DetectCgroups(); err == nil {
		for _, c := range []string{"cpu", "memory"} {
			if mnt := l.Mount(l.Version(), c); mnt != "" {
				if _, err := os.Stat(filepath.Join(mnt, filepath.Base(mgr.bin), spec.Name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("cgroup %s left: %v", c, err)
				}
			}
		}
	}
}

// killGuardAtEnd kills, once the test ends, the jail guard the state at stPath records (and
// with it the jail's processes), so that a failing test leaves no detached VM running. It
// returns the jail the state records, which has a guard.
func killGuardAtEnd(t *testing.T, stPath string) *rundir.Jail {
	t.Helper()
	b, err := os.ReadFile(stPath)
	if err != nil {
		t.Fatal(err)
	}
	var st rundir.State
	if err := json.Unmarshal(b, &st); err != nil || st.Jail == nil || st.Jail.GuardPID == 0 {
		t.Fatalf("no guard in state.json: %s", b)
	}
	t.Cleanup(func() { jailer.KillGuard(st.Jail.GuardPID, st.Jail.GuardStart) })
	return st.Jail
}

// Reaping releases a uid lease whose holder has no directory (a VM that died after it leased
// the uid and before state.json recorded it), and keeps a running jailed VM's.
func TestReclaimJailIDs(t *testing.T) {
	testutil.RequiresRoot(t)
	root := testRoot(t)
	bin := fakeJailPair(t)
	mgr := newManager(t, root, bin)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "holds-a-uid"
	spec.Jailer = &JailerSpec{ChrootBase: filepath.Join(t.TempDir(), "jailer")}
	start(t, mgr, spec)
	ids, err := mgr.jailIDs()
	if err != nil {
		t.Fatal(err)
	}
	defer ids.Close()
	ctx := t.Context()
	if _, err := ids.Allocate(ctx, "died-unrecorded"); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	leases, err := ids.Leases(ctx)
	holders := slices.Collect(maps.Values(leases))
	if err != nil || !slices.Equal(holders, []string{spec.Name}) {
		t.Errorf("leases after the reap: %v (%v), want only %s's", leases, err, spec.Name)
	}
}

// A diff snapshot of a jailed VM restores in a jail: the chain is merged into the chroot, in a
// file of the jail's uid that only it reads (or, with MemoryUffd, into the VM's directory,
// where the page server reads it), and nothing of it is left once the VM ends.
func TestJailedDiffSnapshots(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.TrackDirtyPages = true
	spec.Jailer = &JailerSpec{ChrootBase: base}
	_, _, d2, ref, last := takeDiffChainOf(t, mgr, spec)
	restoreDiff(t, mgr, d2, &ref, last, false)
	restoreDiff(t, mgr, d2, &ref, last, false, WithMemoryBackend(MemoryUffd)) // merged on the host
	if _, err := os.Stat(filepath.Join(root, "vms", "diffs")); !os.IsNotExist(err) {
		t.Errorf("the restored vm's directory is left: %v", err)
	}
	jailLeft(t, spec.Jailer.ChrootBase, root)
}

// TestRealJailedDiffSnapshots is TestJailedDiffSnapshots with the real jailer and firecracker
// of one release: the restored guest counts on from where the last diff left it.
func TestRealJailedDiffSnapshots(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	spec.TrackDirtyPages = true
	_, _, d2, ref, last := takeDiffChainOf(t, mgr, spec)
	restoreDiff(t, mgr, d2, &ref, last, true)
	jailLeft(t, spec.Jailer.ChrootBase, root)
}

// A jailed VM's snapshot restores with MemoryUffd: firecracker connects to the page server's
// socket in its chroot, given to the jail's uid, and the memory file stays on the host, lent
// to no jail; one page server serves two jailed restores of one memory file.
func TestJailedRestoreUffd(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	snap := snapshotCounter(t, mgr, guestKernel(t), "juffd", func(s *MachineSpec) { s.Jailer = &JailerSpec{ChrootBase: base} })
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	r, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd))
	if err != nil {
		t.Fatal(err)
	}
	chroot := filepath.Dir(filepath.Dir(r.APISocket()))
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(chroot, uffdSocket), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Uid < jailer.DefaultFirstID {
		t.Errorf("the uffd socket in the jail: mode %o uid %d, %v; want a socket of the jail's uid", st.Mode, st.Uid, err)
	}
	if ents, _ := os.ReadDir(chroot); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasSuffix(e.Name(), snapshotMemory) }) {
		t.Errorf("the memory file was put into the jail: %v", ents)
	}
	if n, refs := pageServerState(mgr); n != 1 || refs[0] != 1 {
		t.Errorf("%d page servers, refs %v: want one serving the jailed vm", n, refs)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	wait(t, r)
	uffdRestores(t, mgr, snap, false)
	jailLeft(t, base, root)
}

// TestRealJailedRestoreUffd is TestJailedRestoreUffd with the real jailer and firecracker of
// one release. v1.7's firecracker cannot use this host's userfaultfd (TestRealRestoreUffd):
// with it, the jailed restore must fail saying to use File, and leave nothing.
func TestRealJailedRestoreUffd(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	snap := snapshotCounter(t, mgr, spec.Kernel, "juffd", func(s *MachineSpec) { s.Jailer = spec.Jailer })
	if v, _ := fcapi.ParseVersion(snap.FirecrackerVersion); !v.AtLeast(fcapi.Version{Major: 1, Minor: 8}) {
		ctx, cancel := context.WithTimeout(t.Context(), waitLong)
		defer cancel()
		// It fails registering the memory with the userfaultfd it made (from the jail's
		// /dev/userfaultfd), before it connects to the page server's socket.
		_, err := mgr.Restore(ctx, snap, RestoreSpec{}, WithMemoryBackend(MemoryUffd))
		if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "restore with File") {
			t.Fatalf("jailed uffd restore with firecracker %s: %v, want ErrUnsupported saying to use File", snap.FirecrackerVersion, err)
		}
		if n, _ := pageServerState(mgr); n != 0 {
			t.Errorf("%d page servers left after a failed restore", n)
		}
	} else {
		uffdRestores(t, mgr, snap, true)
	}
	jailLeft(t, spec.Jailer.ChrootBase, root)
}

// A jailed VM's snapshot restores under other names while the VM runs on: each clone runs in a
// jail of its own, with its own uid and its ephemeral drive restaged into its own chroot. The
// snapshot's files are lent to no jail: the state file is copied, and the memory file shared
// read-only with the clone's uid (an ACL entry, gone with the clone). Clone starts several
// so, also with the page server.
func TestJailedClone(t *testing.T) {
	mgr, root, _, base := newJailManager(t)
	data := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(data, []byte("the snapshot's data"), 0o644)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Name = "jsrc"
	spec.Drives = []DriveSpec{{ID: "data", Path: data}}
	spec.Jailer = &JailerSpec{ChrootBase: base}
	spec.Vsock = &VsockSpec{CID: 7}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := mgr.Restore(ctx, snap, RestoreSpec{Name: "jclone"})
	if err != nil {
		t.Fatal(err)
	}
	chroot := filepath.Join(base, "firecracker", "jclone", "root")
	if c.APISocket() != filepath.Join(chroot, "run", "api.sock") {
		t.Errorf("the clone's API socket %s is not in a jail of its own", c.APISocket())
	}
	uid := func(m *Machine) string { return strings.Fields(procStatus(t, m.PID(), "Uid"))[0] }
	if uid(c) == uid(m) {
		t.Errorf("the clone runs as the snapshot's VM's uid %s", uid(m))
	}
	if b, err := os.ReadFile(filepath.Join(chroot, "drives", "data.img")); err != nil || string(b) != "the snapshot's data" {
		t.Errorf("the clone's ephemeral drive: %q, %v", b, err)
	}
	// The state file is copied; the memory file shared, still root's and only root's to write,
	// readable by the clone's uid through the clone's link alone.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(snap.Dir, snapshotState), &st); err != nil || st.Uid != 0 || st.Nlink != 1 {
		t.Errorf("the snapshot's state file while a clone runs: uid %d, %d links, %v; want root's, not linked into the jail", st.Uid, st.Nlink, err)
	}
	mem := filepath.Join(snap.Dir, snapshotMemory)
	if err := syscall.Stat(mem, &st); err != nil || st.Uid != 0 || st.Nlink != 2 || st.Mode&0o027 != 0 {
		t.Errorf("the snapshot's memory file while a clone runs: uid %d, mode %o, %d links, %v; want root's, 0640 at most, linked into the jail", st.Uid, st.Mode&0o777, st.Nlink, err)
	}
	if acl := aclUsers(t, mem); !slices.Equal(acl, []string{uid(c)}) {
		t.Errorf("the memory file's ACL lets users %v read it, want the clone's uid %s alone", acl, uid(c))
	}
	// With the page server, the clones' memory is the snapshot's, read on the host.
	clones, err := mgr.Clone(ctx, snap, CloneSpec{Count: 2}, WithMemoryBackend(MemoryUffd))
	if err != nil {
		t.Fatal(err)
	}
	if n, refs := pageServerState(mgr); n != 1 || refs[0] != 2 {
		t.Errorf("%d page servers, refs %v: want one serving both jailed clones", n, refs)
	}
	// The snapshot's VM restored under its own name meanwhile gets neither file as its uid's
	// (to write, or chmod) either: the clones map the memory, and the next one loads both.
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	wait(t, m)
	if m, err = mgr.Restore(ctx, snap, RestoreSpec{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{snapshotState, snapshotMemory} {
		if err := syscall.Stat(filepath.Join(snap.Dir, name), &st); err != nil || st.Uid != 0 {
			t.Errorf("the snapshot's %s while clones share it and its vm is restored: uid %d, %v; want root's, not the restored vm's uid %s", name, st.Uid, err, uid(m))
		}
	}
	for _, vm := range append(clones, c, m) {
		if !strings.HasPrefix(vm.APISocket(), filepath.Join(base, "firecracker", vm.Name())+"/") {
			t.Errorf("vm %s's API socket %s is not in its jail", vm.Name(), vm.APISocket())
		}
		if err := vm.Kill(); err != nil {
			t.Fatal(err)
		}
		wait(t, vm)
	}
	if err := syscall.Stat(mem, &st); err != nil || st.Nlink != 1 || st.Mode&0o777 != 0o600 || len(aclUsers(t, mem)) != 0 {
		t.Errorf("the snapshot's memory file once the clones ended: mode %o, %d links, ACL users %v, %v; want it as it was", st.Mode&0o777, st.Nlink, aclUsers(t, mem), err)
	}
	jailLeft(t, base, root)
}

// aclUsers returns the uids path's access ACL names (getfacl's user:UID entries), decoded
// from the system.posix_acl_access attribute.
func aclUsers(t *testing.T, path string) []string {
	t.Helper()
	buf := make([]byte, 1024)
	n, err := syscall.Getxattr(path, "system.posix_acl_access", buf)
	if errors.Is(err, syscall.ENODATA) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for b := buf[4:n]; len(b) >= 8; b = b[8:] {
		if binary.LittleEndian.Uint16(b) == 0x02 { // ACL_USER
			users = append(users, strconv.Itoa(int(binary.LittleEndian.Uint32(b[4:]))))
		}
	}
	return users
}

// TestRealJailedClone is TestJailedClone with the real jailer and firecracker of one release:
// the clones, each in its own jail, count on from the snapshot.
func TestRealJailedClone(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr, root, spec := realJailed(t)
	spec.Name = "jsrc"
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	followConsole(t, m).nextTick(t)
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	clones, err := mgr.Clone(ctx, snap, CloneSpec{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clones {
		con := followConsole(t, c)
		if x, y := con.nextTick(t), con.nextTick(t); y <= x {
			t.Errorf("clone %s: tick %d after %d", c.Name(), y, x)
		}
		if sock := c.APISocket(); !strings.HasPrefix(sock, spec.Jailer.ChrootBase+"/") || !strings.Contains(sock, "/"+c.Name()+"/root/") {
			t.Errorf("clone %s's API socket %s is not in its jail", c.Name(), c.APISocket())
		}
	}
	for _, vm := range append(clones, m) {
		if err := vm.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		vm.Close()
	}
	jailLeft(t, spec.Jailer.ChrootBase, root)
}
