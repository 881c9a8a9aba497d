package rundir

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

func open(t *testing.T, onReap ReapFunc) *Root {
	t.Helper()
	r, err := Open(filepath.Join(t.TempDir(), "runtime"), onReap, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func create(t *testing.T, r *Root, name string) *Dir {
	t.Helper()
	d, err := r.Create(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// liveState starts a stand-in firecracker serving d's API socket (by its arguments) and
// returns a state naming it, as Start records one. The stand-in is killed when the test ends.
func liveState(t *testing.T, d *Dir) *State {
	t.Helper()
	bin := testutil.Link(t, "firecracker")
	cmd := exec.Command(bin, "--api-sock", d.APISocket)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	st, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := filepath.EvalSymlinks(bin)
	return &State{PID: cmd.Process.Pid, StartTime: st, Exe: exe, Mode: "detached", Created: time.Now().UTC().Truncate(time.Second)}
}

func TestOpenLayoutAndModes(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	for _, p := range []string{r.Path(), filepath.Join(r.Path(), "vms"), d.Dir, d.Drives} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", p, fi.Mode().Perm())
		}
	}
	want := filepath.Join(r.Path(), "vms", "vm1")
	if d.Dir != want || d.APISocket != filepath.Join(want, "api.sock") || d.Drive("rootfs") != filepath.Join(want, "drives", "rootfs.img") {
		t.Errorf("paths %+v", d.Paths)
	}
	if !d.Owned() || d.Name() != "vm1" {
		t.Errorf("owned %v name %q", d.Owned(), d.Name())
	}
	if _, err := Open("", nil, nil); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

func TestStateRoundTrip(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	in := liveState(t, d)
	in.Spec = []byte(`{"name":"vm1"}`)
	in.BaseImage = &BaseImage{ID: "abc", Holder: "vm1", SSHKey: "/cache/abc/id_ed25519"}
	in.Network = []byte(`{"owner":"vm1"}`)
	if err := d.WriteState(in); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(d.State)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.json: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(d.Dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	ld, st, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if ld.Owned() || ld.Dir != d.Dir {
		t.Errorf("lookup dir %+v", ld)
	}
	if st.PID != in.PID || st.StartTime != in.StartTime || st.Name != "vm1" || st.Version != StateVersion ||
		st.Paths != d.Paths || !st.Created.Equal(in.Created) || compact(t, st.Spec) != `{"name":"vm1"}` || *st.BaseImage != *in.BaseImage ||
		compact(t, st.Network) != `{"owner":"vm1"}` {
		t.Errorf("round trip: got %+v, want %+v", st, in)
	}
	if !st.Alive() {
		t.Error("state of this process is not alive")
	}
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestLookupNotFound(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	for _, name := range []string{"nope", "../x", ""} {
		if _, _, err := r.Lookup(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%q): %v, want ErrNotFound", name, err)
		}
	}
	create(t, r, "starting") // no state yet
	if _, _, err := r.Lookup("starting"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(starting): %v, want ErrNotFound", err)
	}
}

func TestCreateConflicts(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	// The lock is held: another Root on the same directory (as another process) is refused.
	r2, err := Open(r.Path(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Create(context.Background(), "vm1"); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	// A detached VM whose starter let go of the lock is still alive: refused too.
	if err := d.WriteState(liveState(t, d)); err != nil {
		t.Fatal(err)
	}
	if err := d.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Create(context.Background(), "vm1"); !errors.Is(err, ErrExists) {
		t.Fatalf("create over a live detached vm: %v, want ErrExists", err)
	}
	if _, err := r.Create(context.Background(), "a/b"); err == nil {
		t.Fatal("name with a slash accepted")
	}
}

func TestCreateReapsDeadVM(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	r := open(t, func(ctx context.Context, name string, st *State) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, name+":"+st.BaseImage.ID)
		return nil
	})
	d := create(t, r, "vm1")
	dead := &State{PID: 1, StartTime: 1, BaseImage: &BaseImage{ID: "img"}} // pid 1 never started at tick 1
	if err := d.WriteState(dead); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.Drive("rootfs"), []byte("data"), 0o600)
	d.Unlock()
	d2 := create(t, r, "vm1")
	if _, err := os.Stat(d2.Drive("rootfs")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staged drive of the dead vm survived: %v", err)
	}
	if len(seen) != 1 || seen[0] != "vm1:img" {
		t.Errorf("reap hook calls %v", seen)
	}
}

func TestReap(t *testing.T) {
	t.Parallel()
	var calls []string
	hookErr := errors.New("lease busy")
	r := open(t, func(ctx context.Context, name string, st *State) error {
		calls = append(calls, name)
		if name == "stuck" {
			return hookErr
		}
		if name == "nostate" && st != nil {
			t.Errorf("nostate: state %+v", st)
		}
		return nil
	})
	owned := create(t, r, "owned") // lock held: kept even without state
	// Keep the Dir reachable: a collected lock's file is closed by its finalizer, which
	// releases the lock.
	defer runtime.KeepAlive(owned)
	live := create(t, r, "live")
	live.WriteState(liveState(t, live))
	live.Unlock()
	for _, name := range []string{"dead", "stuck"} {
		d := create(t, r, name)
		d.WriteState(&State{PID: 999999999, StartTime: 5})
		d.Unlock()
	}
	nostate := create(t, r, "nostate")
	nostate.Unlock()

	reaped, err := r.Reap(context.Background())
	if !errors.Is(err, hookErr) {
		t.Errorf("reap error %v, want the hook's", err)
	}
	if strings.Join(reaped, ",") != "dead,nostate" {
		t.Errorf("reaped %v", reaped)
	}
	names, _ := r.Names()
	if strings.Join(names, ",") != "live,owned,stuck" {
		t.Errorf("left %v", names)
	}
	states, _, err := r.States()
	if err != nil || len(states) != 1 || states[0].Name != "live" {
		t.Errorf("States() = %v, %v", states, err)
	}
	if strings.Join(calls, ",") != "dead,nostate,stuck" {
		t.Errorf("hook calls %v", calls)
	}
}

func TestRemoveNeverTouchesANewerDir(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	d.WriteState(liveState(t, d))
	looked, _, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(context.Background()); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	d2 := create(t, r, "vm1")
	if err := looked.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d2.Dir); err != nil {
		t.Fatalf("the newer directory was removed: %v", err)
	}
	if err := d2.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d2.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir left: %v", err)
	}
}

func TestCreateConcurrent(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half the goroutines race for the same name; each name must be created once.
			name := "vm" + string(rune('a'+i%10))
			d, err := r.Create(context.Background(), name)
			if err == nil {
				d.WriteState(liveState(t, d))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	var ok, exists int
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrExists):
			exists++
		default:
			t.Error(err)
		}
	}
	if ok != 10 || exists != 10 {
		t.Errorf("%d created, %d refused; want 10 and 10", ok, exists)
	}
}

func TestLockHonoursContext(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	held, err := r.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Create(ctx, "vm1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("create while root.lock is held: %v, want DeadlineExceeded", err)
	}
}

// WriteNote writes as CreateFile creates: under root.lock (it waits for it while its ctx
// allows), and only into this incarnation of the VM's directory, never a newer one's.
func TestWriteNote(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := open(t, nil)
	d := create(t, r, "vm1")
	if err := d.WriteNote(ctx, "note.json", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if b, err := d.ReadNote("note.json", 16); err != nil || string(b) != "1" {
		t.Errorf("ReadNote: %q %v, want 1", b, err)
	}
	for _, bad := range []string{"", "..", "a/b", StateFile, IDFile} {
		if err := d.WriteNote(ctx, bad, nil); err == nil || !strings.Contains(err.Error(), "plain file name") {
			t.Errorf("WriteNote(%q): %v, want a refusal", bad, err)
		}
	}

	held, err := r.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err = d.WriteNote(short, "note.json", []byte("2"))
	cancel()
	held.Unlock()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WriteNote while root.lock is held: %v, want DeadlineExceeded", err)
	}
	if b, _ := d.ReadNote("note.json", 16); string(b) != "1" {
		t.Errorf("the note was written without root.lock: %q", b)
	}

	if err := d.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	newer := create(t, r, "vm1")
	if err := d.WriteNote(ctx, "note.json", []byte("3")); !errors.Is(err, ErrNotFound) {
		t.Errorf("WriteNote in a newer incarnation: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(newer.Dir, "note.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the newer directory got the note: %v", err)
	}
}

func TestParseState(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"not json":      `{`,
		"no version":    `{"name":"a"}`,
		"newer version": `{"version":2,"name":"a"}`,
		"bad name":      `{"version":1,"name":"../a"}`,
		"negative pid":  `{"version":1,"name":"a","pid":-1}`,
		"main exit 256": `{"version":1,"name":"a","exit":{"code":0,"reason":"x","main_exit_code":256}}`,
		"main exit -1":  `{"version":1,"name":"a","exit":{"code":0,"reason":"x","main_exit_code":-1}}`,
	}
	for what, body := range bad {
		if _, err := ParseState([]byte(body)); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
	if _, err := ParseState([]byte(`{"version":1,"name":"a","pid":3,"unknown":1}`)); err != nil {
		t.Errorf("good state: %v", err)
	}
	if st, err := ParseState([]byte(`{"version":1,"name":"a","exit":{"code":0,"reason":"x","main_exit_code":255}}`)); err != nil || *st.Exit.MainExitCode != 255 {
		t.Errorf("a record with its main process's exit code: %v", err)
	}
}

func TestDefaultPath(t *testing.T) {
	t.Parallel()
	p := DefaultPath()
	if !filepath.IsAbs(p) || !strings.HasSuffix(p, filepath.Join(".smartvm", "runtime")) {
		t.Fatalf("DefaultPath() = %q", p)
	}
}

func TestDirReap(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	d.WriteState(liveState(t, d))
	looked, _, err := r.Lookup("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if looked.ID() != d.ID() || len(d.ID()) != 32 {
		t.Fatalf("ids %q and %q", looked.ID(), d.ID())
	}
	// Owner holds the lock: not reaped.
	if gone, err := looked.Reap(context.Background()); gone || err != nil {
		t.Fatalf("reap of an owned vm: %v, %v", gone, err)
	}
	// Lock released but the process lives (detached): not reaped.
	d.Unlock()
	if gone, err := looked.Reap(context.Background()); gone || err != nil {
		t.Fatalf("reap of a live detached vm: %v, %v", gone, err)
	}
	// Dead: reaped, and reaping again reports it gone.
	d.WriteState(&State{PID: 999999999, StartTime: 1})
	for range 2 {
		if gone, err := looked.Reap(context.Background()); !gone || err != nil {
			t.Fatalf("reap of a dead vm: %v, %v", gone, err)
		}
	}
	// A newer VM of the same name is left alone, yet the old one counts as gone.
	d2 := create(t, r, "vm1")
	if gone, err := looked.Reap(context.Background()); !gone || err != nil {
		t.Fatalf("reap after replacement: %v, %v", gone, err)
	}
	if _, err := os.Stat(d2.Dir); err != nil {
		t.Fatal(err)
	}
}

// deadOwned makes the directory of VM name whose recorded process is gone while its lock is
// still held, as right after its owner was killed: the returned Dir holds the lock.
func deadOwned(t *testing.T, r *Root, name string) *Dir {
	t.Helper()
	d := create(t, r, name)
	if err := d.WriteState(&State{PID: 999999999, StartTime: 1}); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestReapWaitsForADyingOwner: a VM whose process is gone but whose lock is still held is
// reaped once the lock goes, if that happens within the wait; otherwise it is left alone after
// the bounded wait, and so is a live VM (no wait at all).
func TestReapWaitsForADyingOwner(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadOwned(t, r, "dying")
	time.AfterFunc(30*time.Millisecond, func() { d.Unlock() })
	reaped, err := r.Reap(ctx)
	if err != nil || strings.Join(reaped, ",") != "dying" {
		t.Fatalf("reap while the owner dies: %v, %v", reaped, err)
	}

	stuck := deadOwned(t, r, "stuck")
	t0 := time.Now()
	reaped, err = r.Reap(ctx)
	if took := time.Since(t0); err != nil || len(reaped) != 0 || took < heldWait || took > 10*heldWait {
		t.Fatalf("reap of a held dead vm: %v, %v after %v (want nothing after about %v)", reaped, err, took, heldWait)
	}
	stuck.Unlock()
	if reaped, err := r.Reap(ctx); err != nil || strings.Join(reaped, ",") != "stuck" {
		t.Fatalf("reap once released: %v, %v", reaped, err)
	}
}

// TestReapWaitsWhileTheOwnerCleansUp: an owner cleaning up after its VM removes the directory
// itself, which needs root.lock: the waiting reap lets it, and reports nothing reaped.
func TestReapWaitsWhileTheOwnerCleansUp(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := deadOwned(t, r, "ending")
	removed := make(chan error, 1)
	time.AfterFunc(20*time.Millisecond, func() { removed <- d.Remove(context.Background()) })
	reaped, err := r.Reap(context.Background())
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if err != nil || len(reaped) != 0 {
		t.Fatalf("reap: %v, %v", reaped, err)
	}
	if r.Has("ending") {
		t.Error("directory left")
	}
}

// TestCreateAndDirReapWaitForADyingOwner: reusing the name of a VM whose owner is dying, and
// reaping it through its Dir, wait for the lock too.
func TestCreateAndDirReapWaitForADyingOwner(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	d := deadOwned(t, r, "vm1")
	time.AfterFunc(30*time.Millisecond, func() { d.Unlock() })
	d2, err := r.Create(ctx, "vm1")
	if err != nil {
		t.Fatalf("create over a dying owner's vm: %v", err)
	}
	d2.Remove(ctx)

	d2owner := deadOwned(t, r, "vm2")
	if _, err := r.Create(ctx, "vm2"); !errors.Is(err, ErrExists) {
		t.Fatalf("create while the dead vm's lock stays held: %v, want ErrExists", err)
	}
	looked, _, err := r.Lookup("vm2")
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(30*time.Millisecond, func() { d2owner.Unlock() })
	if gone, err := looked.Reap(ctx); !gone || err != nil {
		t.Fatalf("Dir.Reap while the owner dies: %v, %v", gone, err)
	}
}

func TestLockedAndHas(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	ctx := context.Background()
	if r.Has("vm1") || r.Has("../x") {
		t.Fatal("Has before create")
	}
	d := create(t, r, "vm1")
	ran := false
	err := r.Locked(ctx, func() error {
		ran = true
		// Creating needs root.lock, so it cannot happen meanwhile.
		cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		if _, err := r.Create(cctx, "vm2"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("create under Locked: %v", err)
		}
		return nil
	})
	if err != nil || !ran || !r.Has("vm1") {
		t.Fatalf("Locked: %v, ran %v", err, ran)
	}
	boom := errors.New("boom")
	if err := r.Locked(ctx, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Locked returns %v", err)
	}
	d.Remove(ctx)
	if r.Has("vm1") {
		t.Error("Has after remove")
	}
}

func TestMakeFIFO(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	if d.SerialIn != filepath.Join(d.Dir, "serial.in") {
		t.Fatalf("serial input path %s", d.SerialIn)
	}
	if err := MakeFIFO(d.SerialIn); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(d.SerialIn)
	if err != nil || fi.Mode().Type() != os.ModeNamedPipe || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fifo: %v, %v", fi.Mode(), err)
	}
	if err := MakeFIFO(d.SerialIn); !errors.Is(err, os.ErrExist) {
		t.Errorf("second MakeFIFO: %v, want ErrExist", err)
	}
}

// TestReapWithoutLockFile: a directory without its lock file does not carry smartvm's proof:
// it is left alone and reported; a name with no directory is gone.
func TestReapWithoutLockFile(t *testing.T) {
	t.Parallel()
	r := open(t, nil)
	d := create(t, r, "vm1")
	d.WriteState(&State{PID: 999999999, StartTime: 1})
	d.Unlock()
	if err := os.Remove(d.Lock); err != nil {
		t.Fatal(err)
	}
	reaped, err := r.Reap(context.Background())
	if len(reaped) != 0 || err == nil || !strings.Contains(err.Error(), "no lock file") || !r.Has("vm1") {
		t.Fatalf("reap: %v, %v; left: %v", reaped, err, r.Has("vm1"))
	}
	os.RemoveAll(d.Dir)
	if gone, err := d.Reap(context.Background()); !gone || err != nil {
		t.Fatalf("reap of a missing dir: %v, %v", gone, err)
	}
}

// TestOpenFIFO: the FIFO opens read-write without blocking (no other reader or writer), and
// carries what is written; anything else is refused.
func TestOpenFIFO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo, file := filepath.Join(dir, "fifo"), filepath.Join(dir, "file")
	if err := MakeFIFO(fifo); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFIFO(fifo)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := f.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	os.WriteFile(file, nil, 0o600)
	if _, err := OpenFIFO(file); err == nil || !strings.Contains(err.Error(), "not a fifo") {
		t.Errorf("regular file: %v", err)
	}
	if _, err := OpenFIFO(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

func TestCreateFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := open(t, nil)
	d := create(t, r, "vm1")
	f, err := d.CreateFile(ctx, "supervisor.log")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("x")
	f.Close()
	if _, err := d.CreateFile(ctx, "supervisor.log"); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second CreateFile: %v, want fs.ErrExist", err)
	}
	for _, bad := range []string{"", "..", "a/b", StateFile, DrivesDir, IDFile} {
		if _, err := d.CreateFile(ctx, bad); err == nil || !strings.Contains(err.Error(), "plain file name") {
			t.Errorf("CreateFile(%q): %v, want a refusal", bad, err)
		}
	}

	// Once the directory is removed, or replaced by a newer VM of the same name, nothing is
	// created in it.
	if err := d.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateFile(ctx, "late.log"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateFile after Remove: %v, want ErrNotFound", err)
	}
	newer := create(t, r, "vm1")
	if _, err := d.CreateFile(ctx, "late.log"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateFile in a newer incarnation: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(newer.Dir, "late.log")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the newer directory got the file: %v", err)
	}
}

// LinkFile links only the console, stderr and serial input, under root.lock, and only into
// its own live directory: not into a newer VM's of the same name.
func TestLinkFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := open(t, nil)
	src := create(t, r, "warm")
	f, err := src.CreateFile(ctx, "out.log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := create(t, r, "vm1")
	if err := d.LinkFile(ctx, f, "state.json"); err == nil {
		t.Error("LinkFile made state.json a link")
	}
	held, err := r.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err = d.LinkFile(short, f, SerialFile)
	cancel()
	held.Unlock()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LinkFile while root.lock is held: %v, want DeadlineExceeded", err)
	}
	if err := d.LinkFile(ctx, f, SerialFile); err != nil {
		t.Fatal(err)
	}
	if a, err := os.Stat(filepath.Join(src.Dir, "out.log")); err != nil {
		t.Fatal(err)
	} else if b, err := os.Stat(d.Serial); err != nil || !os.SameFile(a, b) {
		t.Errorf("the console is not a link to the file: %v", err)
	}
	if err := d.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	newer := create(t, r, "vm1")
	if err := d.LinkFile(ctx, f, StderrFile); !errors.Is(err, ErrNotFound) {
		t.Errorf("LinkFile into a newer incarnation: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(newer.Stderr); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the newer directory got the link: %v", err)
	}
}

// CreateWritable's file takes writes at offsets of its own (not appended), and it refuses the
// directory's own names as CreateFile does.
func TestCreateWritable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := create(t, open(t, nil), "vm1")
	f, err := d.CreateWritable(ctx, "memory.img")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("b"), 4); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("a"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(d.Dir, "memory.img")); string(b) != "a\x00\x00\x00b" {
		t.Errorf("file holds %q, want each write at its offset", b)
	}
	if _, err := d.CreateWritable(ctx, StateFile); err == nil {
		t.Error("CreateWritable made state.json")
	}
}
