package rundir

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testutil"
)

// Reaping removes only directories that carry smartvm's proof. Everything else in vms/ is
// left alone, what it points to untouched, and reported.
func TestReapLeavesWhatSmartvmDidNotMake(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "precious"), []byte("x"), 0o600)
	vms := filepath.Join(r.Path(), "vms")
	os.Symlink(outside, filepath.Join(vms, "link"))
	os.Mkdir(filepath.Join(vms, "noid"), 0o700)
	os.WriteFile(filepath.Join(vms, "noid", "state.json"), []byte(`{"version":1,"name":"noid","pid":999999999}`), 0o600)
	withLink := create(t, r, "withlink")
	withLink.WriteState(&State{PID: 999999999, StartTime: 1})
	withLink.Unlock()
	os.Symlink(outside, filepath.Join(withLink.Drives, "escape"))
	dead := create(t, r, "dead")
	dead.WriteState(&State{PID: 999999999, StartTime: 1})
	dead.Unlock()

	reaped, err := r.Reap(context.Background())
	if strings.Join(reaped, ",") != "dead" {
		t.Errorf("reaped %v, want only dead", reaped)
	}
	for _, want := range []string{"vms/link: not a directory smartvm made", "vms/noid does not look like one smartvm made", "vms/withlink does not look like one smartvm made", "symbolic link"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("reap error %v does not report %q", err, want)
		}
	}
	for _, name := range []string{"link", "noid", "withlink"} {
		if _, err := os.Lstat(filepath.Join(vms, name)); err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(outside, "precious")); err != nil || string(b) != "x" {
		t.Errorf("the link target was touched: %v", err)
	}
}

// The paths state.json records are data: Lookup gives the ones the root derives, whatever
// the file says.
func TestStatePathsAreData(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	d.WriteState(&State{PID: 999999999, StartTime: 1})
	b, _ := os.ReadFile(d.State)
	b = bytes.ReplaceAll(b, []byte(d.Dir), []byte("/etc"))
	if err := os.WriteFile(d.State, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, st, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Paths != d.Paths {
		t.Errorf("Lookup took paths from state.json: %+v", st.Paths)
	}
}

// A state.json naming a live process that is not the VM's firecracker (this test process,
// with the right start time) does not make the VM alive: it is reaped, and the process is
// never signalled.
func TestForgedPIDIsNotTrusted(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	victim := exec.Command("sleep", "30")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { victim.Process.Kill(); victim.Wait() }()
	vst, _ := proc.StartTime(victim.Process.Pid)
	d.WriteState(&State{PID: victim.Process.Pid, StartTime: vst})
	d.Unlock()
	_, st, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Alive() {
		t.Fatal("a process that does not serve the vm's socket counts as alive")
	}
	if reaped, err := r.Reap(context.Background()); err != nil || len(reaped) != 1 {
		t.Fatalf("reap: %v %v", reaped, err)
	}
	if err := victim.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the victim process was signalled: %v", err)
	}
}

// A corrupt state.json makes the VM show as corrupt, keeps it while a firecracker still
// serves its socket, and ForceRemove kills that process and removes the directory.
func TestCorruptState(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	live := liveState(t, d)
	d.Unlock()
	for _, garbage := range []string{"{", `{"version":1,"name":"other"}`, `{"version":1,"name":"vm1","pid":-4}`, strings.Repeat("x", 100)} {
		os.WriteFile(d.State, []byte(garbage), 0o600)
		if _, _, err := r.Lookup("vm1"); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%q: Lookup: %v, want ErrCorruptState", garbage, err)
		}
	}
	states, corrupt, err := r.States()
	if err != nil || len(states) != 0 || strings.Join(corrupt, ",") != "vm1" {
		t.Fatalf("States: %v %v %v", states, corrupt, err)
	}
	if reaped, err := r.Reap(context.Background()); err != nil || len(reaped) != 0 {
		t.Fatalf("a corrupt vm whose firecracker runs was reaped: %v %v", reaped, err)
	}
	if pids := r.FindProcesses("vm1"); len(pids) != 1 || pids[0] != live.PID {
		t.Fatalf("FindProcesses = %v, want [%d]", pids, live.PID)
	}
	killed, err := r.ForceRemove(context.Background(), "vm1")
	if err != nil || len(killed) != 1 || killed[0] != live.PID {
		t.Fatalf("ForceRemove: %v %v", killed, err)
	}
	if r.Has("vm1") {
		t.Error("directory left")
	}
	if alive, _ := proc.Alive(live.PID, live.StartTime); alive {
		t.Error("the vm's process still runs")
	}
	if _, err := r.ForceRemove(context.Background(), "vm1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second ForceRemove: %v", err)
	}
}

// A runtime-root lock held by another process is reported (within lockNotice) with its
// holder, and the wait ends with the ctx.
func TestLockWaitIsReportedAndBounded(t *testing.T) {
	t.Parallel()
	var logs testutil.SyncBuffer
	r, err := Open(filepath.Join(t.TempDir(), "runtime"), nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("flock", filepath.Join(r.Path(), "root.lock"), "sleep", "30")
	if err := holder.Start(); err != nil {
		t.Skipf("flock(1): %v", err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	for range 500 {
		if ok, err := tryFlock(filepath.Join(r.Path(), "root.lock")); !ok && err == nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = r.Create(ctx, "vm1")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "held by pid") {
		t.Errorf("Create: %v, want the deadline and the holder", err)
	}
	if !strings.Contains(logs.String(), "waiting for the runtime root's lock") || !strings.Contains(logs.String(), "held_by=\"pid") {
		t.Errorf("log: %q", logs.String())
	}
}

func tryFlock(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return safedir.Flock(f)
}

// Another user who created the runtime root's parent first cannot make smartvm use it: the
// error names the owner and the way out.
func TestOpenRefusesAnotherUsersDirectory(t *testing.T) {
	u := testutil.OtherUser(t)
	shared := testutil.SharedDir(t)
	u.Sh(t, "mkdir -m 0777 "+shared+"/.smartvm && ln -s /etc "+shared+"/.smartvm/runtime")
	_, err := Open(filepath.Join(shared, ".smartvm", "runtime"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), u.Name) || !strings.Contains(err.Error(), "SMARTVM_RUNTIME_DIR") {
		t.Fatalf("Open: %v, want an error naming %s and the way out", err, u.Name)
	}
	// A symlink planted where the root goes, in a directory only its owner controls.
	u.Sh(t, "rm "+shared+"/.smartvm/runtime && rmdir "+shared+"/.smartvm && ln -s /etc "+shared+"/.smartvm")
	_, err = Open(filepath.Join(shared, ".smartvm", "runtime"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("Open through a planted symlink: %v", err)
	}
	if _, err := os.Stat("/etc/runtime"); err == nil {
		t.Fatal("the runtime root was created through the link")
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version":1,"name":"vm1","pid":12,"start_time":3,"paths":{"dir":"/etc"}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"name":"../x"}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`{"version":1,"name":"vm1","pid":42,"start_time":7,"spec":{"name":"vm1"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseState(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("error %v does not wrap ErrCorruptState", err)
			}
			return
		}
		if checkName(st.Name) != nil || st.PID < 0 || st.Version != StateVersion {
			t.Fatalf("accepted %+v", st)
		}
	})
}

// Another user runs a process whose arguments name the VM's API socket, and a state.json
// names it (pid and start time right): it is still not the VM's firecracker, because it runs
// as another user. It is neither believed nor signalled, nor found by FindProcesses.
func TestOtherUsersProcessIsNotTheVM(t *testing.T) {
	u := testutil.OtherUser(t)
	r := open(t, nil)
	d := create(t, r, "vm1")
	// sh keeps running (two commands, so it does not exec sleep) with the socket in its
	// arguments.
	cmd := u.Command("/bin/sh", "-c", "sleep 30; true", "firecracker", "--api-sock", d.APISocket)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	start, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := proc.ExePath(cmd.Process.Pid)
	d.WriteState(&State{PID: cmd.Process.Pid, StartTime: start, Exe: exe})
	d.Unlock()
	_, st, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Alive() {
		t.Fatal("another user's process counts as the vm's firecracker")
	}
	if pids := r.FindProcesses("vm1"); len(pids) != 0 {
		t.Fatalf("FindProcesses found %v", pids)
	}
	if reaped, err := r.Reap(context.Background()); err != nil || len(reaped) != 1 {
		t.Fatalf("reap: %v %v", reaped, err)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the other user's process was signalled: %v", err)
	}
}
