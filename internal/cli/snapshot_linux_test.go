package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// runCounter starts a detached counter guest called name and waits until it has ticked.
func runCounter(t *testing.T, env cliEnv, name string, extra ...string) {
	t.Helper()
	args := append([]string{"run", "-d", "--rm", "--name", name, "--image", "hello", "--memory", "64",
		"--boot-args", bootArgs(testguest.ModeCounter)}, extra...)
	env.run(t, args...).ok(t)
	waitLogs(t, env, name, testguest.TickLine(1))
}

// ticks returns the tick numbers of the counter lines in a console's output, in order. A
// restored guest may first finish a line the snapshot cut short: such a line is skipped.
func ticks(out string) []uint64 {
	var n []uint64
	for _, line := range strings.Split(out, "\n") {
		if tick, ok := testguest.ParseTick(line); ok {
			n = append(n, tick)
		}
	}
	return n
}

// lastTick returns the last tick the VM called name has printed.
func lastTick(t *testing.T, env cliEnv, name string) uint64 {
	t.Helper()
	n := ticks(env.run(t, "logs", name).ok(t).stdout)
	if len(n) == 0 {
		t.Fatalf("vm %s has printed no tick", name)
	}
	return n[len(n)-1]
}

// checkCountsOn fails unless a restored counter guest's console goes on from past tick k
// rather than booting again (which starts at tick 0).
func checkCountsOn(t *testing.T, console string, k uint64) {
	t.Helper()
	n := ticks(console)
	if len(n) == 0 || n[0] <= k {
		t.Errorf("the restored guest printed ticks %v; the original had reached %d before the snapshot:\n%.300s", n, k, console)
	}
}

// testSnapshotRestoreDetached: snapshot a detached VM (it runs on), refuse to restore it
// while it runs, stop it, restore it detached and see it count on from where it was.
func testSnapshotRestoreDetached(t *testing.T, env cliEnv) {
	runCounter(t, env, "snap1")
	k := lastTick(t, env, "snap1")
	dir := filepath.Join(t.TempDir(), "snap")
	if r := env.run(t, "snapshot", "snap1", dir).ok(t); r.stdout != dir+"\n" {
		t.Errorf("snapshot printed %q, want the directory", r.stdout)
	}
	vm := env.psOne(t, "snap1")
	if vm.State != "Running" {
		t.Errorf("the vm is %s after its snapshot, want it resumed", vm.State)
	}
	waitLogs(t, env, "snap1", testguest.TickLine(lastTick(t, env, "snap1")+1))
	env.run(t, "restore", "-d", dir).fails(t, ExitError, "vm snap1 is still running")
	env.run(t, "stop", "snap1").ok(t)
	assertGone(t, vm)
	// No vsock device, so no agent to wait for: refused, and the restored vm is stopped and
	// kept as exited, as a foreground restore --rm=false keeps it; --rm removes it.
	env.run(t, "restore", "-d", "--wait-agent", dir).fails(t, ExitError, "vm has no vsock device")
	waitExited(t, env, "snap1")
	env.run(t, "rm", "snap1").ok(t)
	env.run(t, "restore", "-d", "--rm", "--wait-agent", dir).fails(t, ExitError, "vm has no vsock device")
	if vms := env.psAll(t); len(vms) != 0 {
		t.Errorf("restore -d --rm --wait-agent that failed left %+v", vms)
	}

	if r := env.run(t, "restore", "-d", dir).ok(t); r.stdout != "snap1\n" {
		t.Errorf("restore -d printed %q, want the name", r.stdout)
	}
	restored := env.psOne(t, "snap1")
	if restored.State != "Running" || restored.PID == vm.PID {
		t.Errorf("restored vm: %+v", restored)
	}
	if parentPID(t, restored.PID) == os.Getpid() {
		t.Errorf("the restored firecracker is a child of the test process, not of a supervisor")
	}
	waitLogs(t, env, "snap1", testguest.TickPrefix)
	checkCountsOn(t, env.run(t, "logs", "snap1").ok(t).stdout, k)
	env.run(t, "stop", "snap1").ok(t)
	// As with run -d, the VM is kept as exited until rm.
	if v := waitExited(t, env, "snap1"); !strings.HasPrefix(v.Exit.Reason, "stopped: ") {
		t.Errorf("the restored vm, stopped: %+v", *v.Exit)
	}
	if processAlive(restored.PID) {
		t.Errorf("the restored vm's firecracker (pid %d) still runs", restored.PID)
	}
	env.run(t, "restore", "-d", dir).fails(t, ExitError, `the name "snap1" is taken by a vm that exited; remove it with smartvm rm snap1`)
	env.run(t, "rm", "snap1").ok(t)
	assertGone(t, restored)
	// --rm keeps nothing.
	env.run(t, "restore", "-d", "--rm", dir).ok(t)
	brief := env.psOne(t, "snap1")
	env.run(t, "stop", "snap1").ok(t)
	waitEmpty(t, env)
	assertGone(t, brief)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		t.Errorf("the snapshot went with the restored vm: %v", err)
	}
}

// testRestoreForeground: snapshot --stop ends the VM; restore brings it back in the
// foreground, with its console, until Ctrl-] q stops it.
func testRestoreForeground(t *testing.T, env cliEnv) {
	runCounter(t, env, "snap2")
	k := lastTick(t, env, "snap2")
	vm := env.psOne(t, "snap2")
	dir := filepath.Join(t.TempDir(), "snap")
	env.run(t, "snapshot", "--stop", "snap2", dir).ok(t)
	if vms := env.ps(t); len(vms) != 0 {
		t.Fatalf("snapshot --stop left %+v", vms)
	}
	assertGone(t, vm)

	in, typed := io.Pipe()
	defer typed.Close()
	var out, errOut testutil.SyncBuffer
	done := make(chan result, 1)
	go func() { done <- env.runIO(t.Context(), in, &out, &errOut, "restore", dir) }()
	waitOutput(t, &out, testguest.TickPrefix)
	restored := env.psOne(t, "snap2")
	if _, err := typed.Write([]byte("\x1dq")); err != nil {
		t.Fatal(err)
	}
	(<-done).ok(t)
	checkCountsOn(t, out.String(), k)
	assertGone(t, restored)
}

func TestSnapshotRestoreDetached(t *testing.T) {
	testutil.CheckLeaks(t)
	testSnapshotRestoreDetached(t, fakeEnv(t))
}

func TestRestoreForeground(t *testing.T) {
	testutil.CheckLeaks(t)
	testRestoreForeground(t, fakeEnv(t))
}

func TestRealSnapshotRestore(t *testing.T) {
	testutil.CheckLeaks(t)
	env := vmEnv(t, testutil.FirecrackerBin(t))
	t.Run("detached", func(t *testing.T) { testSnapshotRestoreDetached(t, env) })
	t.Run("foreground", func(t *testing.T) { testRestoreForeground(t, env) })
}

func TestSnapshotErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	env.run(t, "snapshot", "web").fails(t, ExitUsage, "want a VM name and a directory, got 1")
	env.run(t, "restore").fails(t, ExitUsage, "want a snapshot directory, got 0")
	env.run(t, "snapshot", "nope", t.TempDir()).fails(t, ExitError, `no running vm is called "nope"`)

	missing := filepath.Join(t.TempDir(), "missing")
	env.run(t, "restore", missing).fails(t, ExitError, missing+" does not exist")
	empty := t.TempDir()
	env.run(t, "restore", empty).fails(t, ExitError, empty+" is not a snapshot: it has no manifest.json")
	file := filepath.Join(empty, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env.run(t, "restore", file).fails(t, ExitError, file+" is not a snapshot")

	// A VM with an ephemeral drive, whose copy the snapshot holds.
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	runCounter(t, env, "snap3", "--drive", data)
	env.run(t, "snapshot", "snap3", empty).fails(t, ExitError, empty+" is not empty: give a new or empty directory")
	dir := filepath.Join(t.TempDir(), "snap")
	env.run(t, "snapshot", "--stop", "snap3", dir).ok(t)
	if _, err := os.Stat(filepath.Join(dir, "drives", "drive0.img")); err != nil {
		t.Errorf("the snapshot lacks the drive's copy: %v", err)
	}

	// Another runtime root stages the drive elsewhere.
	r := env.run(t, "--runtime-dir", t.TempDir(), "restore", dir)
	r.fails(t, ExitError, "restore in the runtime root the snapshot was taken in")
	r.fails(t, ExitError, "choose that runtime root with --runtime-dir or $SMARTVM_RUNTIME_DIR")

	// Another minor release of Firecracker, in the foreground and through the supervisor:
	// another binary (a version is a property of the file, and smartvm caches it by the
	// file's identity), which the fake makes by reading its version from the environment.
	t.Setenv(fakefc.EnvVersion, "1.7.0")
	env[envFirecrackerBin] = testutil.Link(t, "firecracker")
	for _, args := range [][]string{{"restore", dir}, {"restore", "-d", dir}} {
		r := env.run(t, args...)
		r.fails(t, ExitError, "snapshot written by Firecracker 1.14.2 cannot be loaded by 1.7.0")
		r.fails(t, ExitError, "point --firecracker-bin or $SMARTVM_FIRECRACKER_BIN at a Firecracker v1.14.x")
	}
	if vms := env.ps(t); len(vms) != 0 {
		t.Errorf("failed restores left %+v", vms)
	}
}

// testDiffSnapshot: run --track-dirty-pages, a full snapshot, two diffs over it, and a
// restore of the last diff counting on; --diff refuses a VM without tracking and a missing
// --base.
func testDiffSnapshot(t *testing.T, env cliEnv) {
	runCounter(t, env, "diffs", "--track-dirty-pages")
	full, d1, d2 := filepath.Join(t.TempDir(), "full"), filepath.Join(t.TempDir(), "d1"), filepath.Join(t.TempDir(), "d2")
	env.run(t, "snapshot", "diffs", full).ok(t)
	env.run(t, "snapshot", "diffs", d1, "--diff").fails(t, ExitUsage, "--diff needs --base")
	env.run(t, "snapshot", "diffs", d1, "--diff", "--base", d2).fails(t, ExitError, "does not exist")
	env.run(t, "snapshot", "diffs", d1, "--diff", "--base", full).ok(t)
	waitLogs(t, env, "diffs", testguest.TickLine(lastTick(t, env, "diffs")+1))
	k := lastTick(t, env, "diffs")
	env.run(t, "snapshot", "diffs", d2, "--diff", "--base", d1, "--stop").ok(t)
	if vms := env.ps(t); len(vms) != 0 {
		t.Fatalf("snapshot --stop left %+v", vms)
	}
	env.run(t, "restore", "-d", "--rm", d2).ok(t)
	waitLogs(t, env, "diffs", testguest.TickPrefix)
	checkCountsOn(t, env.run(t, "logs", "diffs").ok(t).stdout, k)
	env.run(t, "stop", "diffs").ok(t)

	runCounter(t, env, "plain")
	env.run(t, "snapshot", "plain", filepath.Join(t.TempDir(), "x"), "--diff", "--base", full).fails(t, ExitError, "does not track dirty pages")
	env.run(t, "stop", "plain").ok(t)
}

func TestDiffSnapshot(t *testing.T) {
	testutil.CheckLeaks(t)
	testDiffSnapshot(t, fakeEnv(t))
}

func TestRealDiffSnapshot(t *testing.T) {
	testutil.CheckLeaks(t)
	testDiffSnapshot(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

// testClone: a running VM's snapshot restored under a new name and cloned, detached, while
// the VM runs on: every copy counts on, inspect shows when its clock woke, and stopping them
// leaves nothing.
func testClone(t *testing.T, env cliEnv) {
	runCounter(t, env, "tmpl")
	k := lastTick(t, env, "tmpl")
	dir := filepath.Join(t.TempDir(), "snap")
	env.run(t, "snapshot", "tmpl", dir).ok(t)
	env.run(t, "clone", dir).fails(t, ExitUsage, "--count 0: give how many VMs to start")
	env.run(t, "clone", dir, "--count", "2", "--name-prefix", "bad/").fails(t, ExitError, `name prefix "bad/"`)
	env.run(t, "restore", "-d", "--name", "tmpl", dir).fails(t, ExitError, `a vm called "tmpl" is already running: choose another --name`)
	if r := env.run(t, "restore", "-d", "--rm", "--name", "copy", dir).ok(t); r.stdout != "copy\n" {
		t.Errorf("restore -d --name printed %q", r.stdout)
	}
	if r := env.run(t, "clone", "-d", "--rm", dir, "--count", "3", "--name-prefix", "w-").ok(t); r.stdout != "w-1\nw-2\nw-3\n" {
		t.Errorf("clone -d printed %q", r.stdout)
	}
	// Names that are taken are skipped.
	if r := env.run(t, "clone", "-d", dir, "--count", "1", "--name-prefix", "w-").ok(t); r.stdout != "w-4\n" {
		t.Errorf("a second clone -d printed %q", r.stdout)
	}
	for _, name := range []string{"copy", "w-1", "w-2", "w-3", "w-4"} {
		waitLogs(t, env, name, testguest.TickPrefix)
		checkCountsOn(t, env.run(t, "logs", name).ok(t).stdout, k)
		out := env.run(t, "inspect", name).ok(t).stdout
		if !strings.Contains(out, `"restored_from": "`+dir+`"`) || !strings.Contains(out, `"snapshot_taken"`) {
			t.Errorf("inspect %s lacks the snapshot it came from:\n%.600s", name, out)
		}
	}
	vms := env.ps(t)
	if len(vms) != 6 {
		t.Errorf("ps lists %d vms, want the template and 5 copies", len(vms))
	}
	env.run(t, "stop", "tmpl", "copy", "w-1", "w-2", "w-3", "w-4").ok(t)
	// Without --rm, a detached clone is kept as exited, as with run -d, until rm.
	if v := waitExited(t, env, "w-4"); !strings.HasPrefix(v.Exit.Reason, "stopped: ") {
		t.Errorf("the clone kept, stopped: %+v", *v.Exit)
	}
	if r := env.run(t, "ps", "-aq").ok(t); r.stdout != "w-4\n" {
		t.Errorf("ps -aq after stopping every vm: %q, want only the clone without --rm", r.stdout)
	}
	env.run(t, "rm", "w-4").ok(t)
	waitEmpty(t, env)
	for _, vm := range vms {
		assertGone(t, vm)
	}
}

func TestClone(t *testing.T) {
	testutil.CheckLeaks(t)
	testClone(t, fakeEnv(t))
}

func TestRealClone(t *testing.T) {
	testutil.CheckLeaks(t)
	testClone(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

func TestCloneUffd(t *testing.T) {
	testutil.CheckLeaks(t)
	testCloneUffd(t, fakeEnv(t))
}

func TestRealCloneUffd(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	env := vmEnv(t, bin)
	if v, err := smartvm.FirecrackerVersion(context.Background(), bin); err != nil || !v.AtLeast(fcapi.Version{Major: 1, Minor: 8}) {
		// v1.7's userfaultfd crate refuses this kernel's ioctl flags: refused, naming File.
		runCounter(t, env, "old")
		dir := filepath.Join(t.TempDir(), "snap")
		env.run(t, "snapshot", "--stop", "old", dir).ok(t)
		env.run(t, "restore", "-d", "--memory-backend", "uffd", dir).fails(t, ExitError, "restore with File")
		waitEmpty(t, env)
		return
	}
	testCloneUffd(t, env)
}

// testCloneUffd: with --memory-backend uffd the process that owns a restored VM (its
// supervisor) serves the VM's memory from the snapshot's memory file, which it maps; with the
// default it does not.
func testCloneUffd(t *testing.T, env cliEnv) {
	runCounter(t, env, "tmplu")
	k := lastTick(t, env, "tmplu")
	dir := filepath.Join(t.TempDir(), "snap")
	env.run(t, "snapshot", "--stop", "tmplu", dir).ok(t)
	env.run(t, "restore", "-d", "--memory-backend", "swap", dir).fails(t, ExitUsage, `invalid --memory-backend "swap": want file or uffd`)
	env.run(t, "clone", dir, "-n", "1", "--memory-backend", "swap").fails(t, ExitUsage, `invalid --memory-backend "swap"`)
	env.run(t, "restore", "-d", "--rm", "--memory-backend", "uffd", "--name", "u-0", dir).ok(t)
	env.run(t, "restore", "-d", "--rm", "--memory-backend", "file", "--name", "f-0", dir).ok(t)
	env.run(t, "clone", "-d", "--rm", "--memory-backend", "UFFD", dir, "--count", "2", "--name-prefix", "u-").ok(t)
	mem, err := filepath.EvalSymlinks(filepath.Join(dir, "vm.mem"))
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, vm := range env.ps(t) {
		pids[vm.Name] = vm.PID
	}
	for _, name := range []string{"u-0", "u-1", "u-2", "f-0"} {
		waitLogs(t, env, name, testguest.TickPrefix)
		checkCountsOn(t, env.run(t, "logs", name).ok(t).stdout, k)
		if pids[name] == 0 {
			t.Errorf("ps does not list %s", name)
			continue
		}
		if got, want := mapsFile(t, parentPID(t, pids[name]), mem), name != "f-0"; got != want {
			t.Errorf("%s: its supervisor maps the memory file: %v, want %v", name, got, want)
		}
	}
	env.run(t, "stop", "u-0", "u-1", "u-2", "f-0").ok(t)
	waitEmpty(t, env)
}

// mapsFile reports whether process pid maps the file at path.
func mapsFile(t *testing.T, pid int, path string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " "+path+"\n")
}
