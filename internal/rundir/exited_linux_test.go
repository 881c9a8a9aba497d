package rundir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// entries lists a VM directory's entries.
func entries(t *testing.T, d *Dir) []string {
	t.Helper()
	ents, err := os.ReadDir(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// deadVM creates VM name with files as a run leaves them and a state naming a dead process.
func deadVM(t *testing.T, r *Root, name string, st *State) *Dir {
	t.Helper()
	d := create(t, r, name)
	st.PID, st.StartTime = 999999999, 1
	if err := d.WriteState(st); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.Drive("rootfs"), d.Log, d.APISocket, d.Config, filepath.Join(d.Dir, "supervisor.log")} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	serial := make([]byte, 64<<10)
	for i := range serial {
		serial[i] = 'a' + byte(i%26)
	}
	if err := os.WriteFile(d.Serial, serial, 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

var recordFiles = []string{IDFile, LockFile, SerialFile, StateFile}

// A kept VM whose process is gone and whose lock is free is recorded as exited by a reap:
// the hook releases what it held, everything but its record goes, serial.log is bounded, and
// the record stays until RemoveExited, its name taken.
func TestReapRecordsKeptVM(t *testing.T) {
	t.Parallel()
	var hooked []string
	r := open(t, func(_ context.Context, name string, st *State) error {
		hooked = append(hooked, name)
		return nil
	})
	r.SetSerialLimit(8 << 10)
	ctx := context.Background()
	d := deadVM(t, r, "owned", &State{Keep: true, Mode: "owned"})
	d.Unlock()
	d2 := deadVM(t, r, "detached", &State{Keep: true, Mode: "detached"})
	d2.Unlock()
	d3 := deadVM(t, r, "notkept", &State{Mode: "detached"})
	d3.Unlock()

	reaped, err := r.Reap(ctx)
	if err != nil || !slices.Equal(reaped, []string{"detached", "notkept", "owned"}) {
		t.Fatalf("reap: %v, %v", reaped, err)
	}
	if !slices.Equal(hooked, []string{"detached", "notkept", "owned"}) {
		t.Errorf("reap hook ran for %v", hooked)
	}
	if r.Has("notkept") {
		t.Error("a vm that is not kept was not removed")
	}
	for name, reason := range map[string]string{"owned": ReasonOwnerDied, "detached": ReasonUnwatched} {
		_, st, err := r.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Exit == nil || st.Exit.Reason != reason || st.Exit.Code != -1 || st.Exit.At.IsZero() {
			t.Errorf("%s: exit %+v, want reason %q", name, st.Exit, reason)
		}
		if r.Active(name) {
			t.Errorf("%s: an exited vm counts as active", name)
		}
	}
	if got := entries(t, d); !slices.Equal(got, recordFiles) {
		t.Errorf("the record holds %v, want %v", got, recordFiles)
	}
	var sst syscall.Stat_t
	if err := syscall.Stat(d.Serial, &sst); err != nil || sst.Blocks*512 > 12<<10 || sst.Size != 64<<10 {
		t.Errorf("serial.log: %d bytes allocated of %d (%v), want the last 8 KiB or so kept", sst.Blocks*512, sst.Size, err)
	}

	// Reaping again leaves records alone, hook included.
	hooked = nil
	if reaped, err := r.Reap(ctx); err != nil || len(reaped) != 0 || len(hooked) != 0 {
		t.Errorf("second reap: %v, %v, hook %v", reaped, err, hooked)
	}
	if _, err := r.Create(ctx, "owned"); !errors.Is(err, ErrExists) || !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "smartvm rm owned") {
		t.Errorf("create with an exited vm's name: %v", err)
	}
	_, names, _, err := r.Records()
	if err != nil || len(names) != 2 {
		t.Errorf("Records: exited %v, %v", names, err)
	}
	for _, name := range []string{"owned", "detached"} {
		if err := r.RemoveExited(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := r.RemoveExited(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("remove twice: %v", err)
		}
	}
	if names, _ := r.Names(); len(names) != 0 {
		t.Errorf("left: %v", names)
	}
}

// RemoveExited of a VM whose process is gone waits for its owner to record the end, for
// longer than a reap waits: the owner, a supervisor on a loaded host, may be slow to do it
// after rm -f killed the VM.
func TestRemoveExitedWaitsForTheOwner(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadVM(t, r, "vm1", &State{Keep: true, Mode: "detached"})
	late := 3 * heldWait
	time.AfterFunc(late, func() { d.Keep(ctx, Exit{Code: -1, Signal: "SIGKILL", Reason: "killed"}) })
	t0 := time.Now()
	if err := r.RemoveExited(ctx, "vm1"); err != nil {
		t.Fatalf("remove a vm its owner records late: %v", err)
	}
	if took := time.Since(t0); took < late {
		t.Errorf("removed after %v, before the owner let go (%v)", took, late)
	}
	if r.Has("vm1") {
		t.Error("the record is left")
	}
}

// The owner of a kept VM records its end itself (Dir.Keep), and lets go of its lock.
// RemoveExited refuses a VM that has not exited.
func TestKeepByOwner(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadVM(t, r, "vm1", &State{Keep: true, Mode: "owned"})
	short, cancel := context.WithTimeout(ctx, heldWait)
	defer cancel()
	if err := r.RemoveExited(short, "vm1"); !errors.Is(err, ErrExists) {
		t.Errorf("remove a vm its owner holds: %v, want ErrExists", err)
	}
	if err := d.Keep(ctx, Exit{Code: 3, Reason: "firecracker exited with code 3", LogTail: strings.Repeat("x", 2*MaxLogTail)}); err != nil {
		t.Fatal(err)
	}
	if d.Owned() {
		t.Error("Keep did not release the vm's lock")
	}
	_, st, err := r.Lookup("vm1")
	if err != nil || st.Exit == nil || st.Exit.Code != 3 || len(st.Exit.LogTail) != MaxLogTail {
		t.Fatalf("lookup: %+v, %v", st, err)
	}
	if got := entries(t, d); !slices.Equal(got, recordFiles) {
		t.Errorf("the record holds %v, want %v", got, recordFiles)
	}
	if err := r.RemoveExited(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	// A live VM is not removable.
	d = create(t, r, "live")
	d.WriteState(liveState(t, d))
	d.Unlock()
	if err := r.RemoveExited(ctx, "live"); !errors.Is(err, ErrExists) || !r.Has("live") {
		t.Errorf("remove a live vm: %v, want ErrExists", err)
	}
}

// An exit record that smartvm does not write makes the state corrupt, and a serial.log that is not a regular file is never opened.
func TestExitRecordTrust(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadVM(t, r, "vm1", &State{Keep: true})
	if err := d.Keep(ctx, Exit{Code: 0, Reason: "guest reset or shut down (exit code 0)"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(d.State)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), `"reason": "guest reset`, `"reason": "`+strings.Repeat("y", 5000), 1)
	if err := os.WriteFile(d.State, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Lookup("vm1"); !errors.Is(err, ErrCorruptState) {
		t.Errorf("lookup of a record with an overlong reason: %v, want ErrCorruptState", err)
	}
	// As with any corrupt state that no firecracker serves, removing (or reaping) it removes it.
	if err := r.RemoveExited(ctx, "vm1"); err != nil || r.Has("vm1") {
		t.Errorf("remove a corrupt record: %v", err)
	}

	d = deadVM(t, r, "vm2", &State{Keep: true})
	if err := d.Keep(ctx, Exit{Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o600)
	os.Remove(d.Serial)
	os.Symlink(outside, d.Serial)
	ld, _, err := r.Lookup("vm2")
	if err != nil {
		t.Fatal(err)
	}
	if f, err := ld.OpenFile(SerialFile); err == nil {
		f.Close()
		t.Error("the serial.log of a record was opened through a symlink")
	}
}

// UpdateState changes a VM's state from a looked-up Dir (another process than the owner), and
// refuses once the VM is kept as exited or its directory is gone; fn's error writes nothing.
func TestUpdateState(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadVM(t, r, "vm1", &State{Keep: true, Mode: "owned", Spec: []byte(`{"a":1}`)})
	other, _, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.UpdateState(ctx, func(st *State) error { st.Spec = []byte(`{"a":2}`); return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := other.UpdateState(ctx, func(st *State) error { st.Spec = []byte(`{"a":3}`); return boom }); !errors.Is(err, boom) {
		t.Errorf("fn's error: %v", err)
	}
	if _, st, err := r.Lookup("vm1"); err != nil || strings.Join(strings.Fields(string(st.Spec)), "") != `{"a":2}` || st.Name != "vm1" || st.PID != 999999999 {
		t.Fatalf("after the update: %+v %v", st, err)
	}
	if err := d.Keep(ctx, Exit{Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := other.UpdateState(ctx, func(*State) error { return nil }); !errors.Is(err, ErrExited) {
		t.Errorf("kept as exited: %v, want ErrExited", err)
	}
	if err := r.RemoveExited(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := other.UpdateState(ctx, func(*State) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("gone: %v, want ErrNotFound", err)
	}
}
