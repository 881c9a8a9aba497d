package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// Snapshots hold the guest's memory: their files are 0600 and their directories 0700,
// whatever the umask, and a snapshot into the runtime root is refused.
func TestSnapshotIsPrivate(t *testing.T) {
	mgr, root, kernel := fakeSetup(t)
	ctx := context.Background()
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Drives = []DriveSpec{{ID: "scratch", Path: kernel}}
	m := start(t, mgr, spec)
	dir := filepath.Join(t.TempDir(), "snap")
	old := unix.Umask(0)
	_, err := m.Snapshot(ctx, dir)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		fi, _ := os.Lstat(p)
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = fs.ModeDir | 0o700
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		return nil
	})
	// Another user can read none of it, even where it can reach the directory.
	if os.Geteuid() == 0 {
		u := testutil.OtherUser(t)
		top := filepath.Dir(filepath.Dir(dir))
		os.Chmod(top, 0o755)
		defer os.Chmod(top, 0o700)
		os.WriteFile(filepath.Join(filepath.Dir(dir), "public"), nil, 0o644)
		if out, err := u.Command("cat", filepath.Join(filepath.Dir(dir), "public")).CombinedOutput(); err != nil {
			t.Fatalf("%s cannot even read a public file beside the snapshot: %v %s", u.Name, err, out)
		}
		for _, f := range []string{"vm.mem", "vm.state", "manifest.json", "drives/scratch.img"} {
			if out, err := u.Command("cat", filepath.Join(dir, f)).CombinedOutput(); err == nil {
				t.Errorf("%s read %s: %q", u.Name, f, out)
			}
		}
	}
	for _, bad := range []string{m.Dir(), filepath.Join(m.Dir(), "snap"), filepath.Join(root, "snap")} {
		if _, err := m.Snapshot(ctx, bad); err == nil || !strings.Contains(err.Error(), "inside the runtime root") {
			t.Errorf("snapshot into %s: %v, want a refusal", bad, err)
		}
	}
	// A directory others can write is refused too: they could swap the files Firecracker
	// writes the guest's memory into.
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := m.Snapshot(ctx, open); !errors.Is(err, safedir.ErrUntrusted) {
		t.Errorf("snapshot into a world-writable dir: %v", err)
	}
}

// A snapshot killed between its pause and its resume leaves the VM paused and marked; List
// says why, and Resume clears it.
func TestInterruptedSnapshotIsReported(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx := context.Background()
	m := start(t, mgr, guestSpec(kernel, testguest.ModeCounter))
	// What Snapshot does before it asks Firecracker for the files, and a killed process
	// never undoes.
	if err := m.dir.MarkSnapshot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	infos, err := mgr.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].State != StatePaused || infos[0].Note != NotePausedBySnapshot {
		t.Fatalf("List: %+v, %v", infos, err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if infos, _ := mgr.List(ctx); len(infos) != 1 || infos[0].Note != "" {
		t.Fatalf("after resume: %+v", infos)
	}
	// An interrupted Snapshot (its ctx cancelled while Firecracker writes) resumes the VM.
	sctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(time.Millisecond); cancel() }()
	m.Snapshot(sctx, filepath.Join(t.TempDir(), "snap"))
	if s, err := m.State(ctx); err != nil || s != StateRunning {
		t.Fatalf("after an interrupted snapshot: %v %v, want running", s, err)
	}
	if m.dir.SnapshotMarked() {
		t.Error("mark left after the snapshot resumed the vm")
	}
}

// A persistent drive is used read-write by one VM at a time; a drive that is written cannot be
// another drive of the same VM; a read-only user blocks a writer.
func TestPersistentDriveIsExclusive(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx := context.Background()
	disk := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(disk, make([]byte, 4096), 0o600)
	persistent := DriveSpec{ID: "disk", Path: disk, Persistent: true}
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "a"
	spec.Drives = []DriveSpec{persistent}
	a := start(t, mgr, spec)

	spec.Name = "b"
	if _, err := mgr.Start(ctx, spec); !errors.Is(err, ErrDriveInUse) {
		t.Errorf("second writer: %v, want ErrDriveInUse", err)
	}
	spec.Drives = []DriveSpec{{ID: "disk", Path: disk, ReadOnly: true, Persistent: true}}
	if _, err := mgr.Start(ctx, spec); !errors.Is(err, ErrDriveInUse) {
		t.Errorf("reader while another vm writes: %v, want ErrDriveInUse", err)
	}
	spec.Name = "c"
	link := filepath.Join(t.TempDir(), "link.img")
	os.Symlink(disk, link)
	spec.Drives = []DriveSpec{{ID: "ro", Path: disk, ReadOnly: true, Persistent: true}, {ID: "rw", Path: link, Persistent: true}}
	if _, err := mgr.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "are the same file") {
		t.Errorf("one file as ro and persistent: %v", err)
	}
	// The lock lives with a's firecracker: once it ends, b may write.
	a.Kill()
	wait(t, a)
	a.Close()
	spec.Name = "b"
	spec.Drives = []DriveSpec{persistent}
	b := start(t, mgr, spec)
	b.Kill()
}

// A FIFO where a kernel or a drive belongs is refused at once instead of hanging Start.
func TestStartRefusesFIFOs(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := guestSpec(fifo, testguest.ModeHalt)
	if _, err := mgr.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("kernel FIFO: %v", err)
	}
	for _, d := range []DriveSpec{{ID: "d", Path: fifo}, {ID: "d", Path: fifo, Persistent: true}, {ID: "d", Path: fifo, ReadOnly: true, Persistent: true}} {
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.Drives = []DriveSpec{d}
		if _, err := mgr.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "FIFO") {
			t.Errorf("drive FIFO %+v: %v", d, err)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("a FIFO made Start wait")
	}
}

// A snapshot is input: a manifest that points a drive copy outside the snapshot, or a copy
// that is a symlink, is refused; so is a persistent drive whose size changed.
func TestRestoreRefusesHostileSnapshots(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx := context.Background()
	disk := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(disk, make([]byte, 4096), 0o600)
	scratch := filepath.Join(t.TempDir(), "scratch.img")
	os.WriteFile(scratch, []byte("scratch"), 0o600)
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "hostile"
	spec.Drives = []DriveSpec{{ID: "scratch", Path: scratch}, {ID: "disk", Path: disk, Persistent: true}}
	m := start(t, mgr, spec)
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := m.Snapshot(ctx, dir); err != nil {
		t.Fatal(err)
	}
	m.Kill()
	wait(t, m)
	m.Close()

	manifest := filepath.Join(dir, "manifest.json")
	good, _ := os.ReadFile(manifest)
	var raw map[string]any
	json.Unmarshal(good, &raw)
	raw["drives"].(map[string]any)["scratch"].(map[string]any)["file"] = "../../../etc/shadow"
	bad, _ := json.Marshal(raw)
	os.WriteFile(manifest, bad, 0o600)
	if _, err := OpenSnapshot(dir); err == nil || !strings.Contains(err.Error(), "drive \"scratch\" has file") {
		t.Errorf("drive outside the snapshot: %v", err)
	}
	os.WriteFile(manifest, good, 0o600)

	copyPath := filepath.Join(dir, "drives", "scratch.img")
	os.Remove(copyPath)
	os.Symlink("/etc/shadow", copyPath)
	snap, err := OpenSnapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{}); !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("drive copy that is a symlink: %v", err)
	}
	os.Remove(copyPath)
	os.WriteFile(copyPath, []byte("scratch"), 0o600)

	os.WriteFile(disk, make([]byte, 8192), 0o600)
	if _, err := mgr.Restore(ctx, snap, RestoreSpec{}); err == nil || !strings.Contains(err.Error(), "was 4096 when the snapshot was taken") {
		t.Errorf("persistent drive of another size: %v", err)
	}
	os.Remove(filepath.Join(dir, "manifest.json"))
	if _, err := OpenSnapshot(dir); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("snapshot without its manifest: %v", err)
	}
}

// restageDrives reaches a snapshot's drive copies through a handle on its directory: a
// symlink anywhere on the way (the snapshot's own path, or its drives directory swapped for a
// link after the snapshot's files were checked) is refused, and nothing is staged from the
// file it leads to.
func TestRestageDrivesFollowsNoLink(t *testing.T) {
	elsewhere := t.TempDir()
	if err := os.WriteFile(filepath.Join(elsewhere, "scratch.img"), []byte("another vm's disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	snapDir := filepath.Join(t.TempDir(), "snap")
	if err := os.MkdirAll(filepath.Join(snapDir, "drives"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snapDir, "drives", "scratch.img"), []byte("the copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	linkedSnap := filepath.Join(t.TempDir(), "snap-link")
	if err := os.Symlink(snapDir, linkedSnap); err != nil {
		t.Fatal(err)
	}
	linkedDrives := filepath.Join(t.TempDir(), "snap")
	if err := os.MkdirAll(linkedDrives, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(linkedDrives, "drives")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dir string }{
		{"snapshot directory through a link", linkedSnap},
		{"drives directory a link", linkedDrives},
	} {
		t.Run(tc.name, func(t *testing.T) {
			staged := t.TempDir()
			s := &starter{dir: &rundir.Dir{Paths: rundir.Paths{Drives: staged}}}
			snap := &Snapshot{Dir: tc.dir, Drives: map[string]SnapshotDrive{"scratch": {File: "drives/scratch.img"}}}
			err := s.restageDrives(context.Background(), snap)
			if !errors.Is(err, safedir.ErrUntrusted) {
				t.Errorf("restage: %v, want a refusal (safedir.ErrUntrusted)", err)
			}
			if b, err := os.ReadFile(filepath.Join(staged, "scratch.img")); err == nil {
				t.Errorf("staged %q through the link", b)
			}
		})
	}
}

// A corrupt state.json shows as an unknown VM; ForceRemove kills its firecracker (found by
// its socket, not by the file) and removes it.
func TestCorruptStateIsRemovable(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx := context.Background()
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "corrupt"
	m := start(t, mgr, spec, Detached())
	pid := m.PID()
	m.Release()
	os.WriteFile(filepath.Join(m.Dir(), "state.json"), []byte(`{"version":1,"name":"corrupt","pid":1,`), 0o600)
	infos, err := mgr.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].State != StateUnknown || infos[0].Note != NoteCorruptState {
		t.Fatalf("List: %+v %v", infos, err)
	}
	if _, err := mgr.Attach(ctx, "corrupt"); !errors.Is(err, ErrCorruptState) {
		t.Errorf("Attach: %v, want ErrCorruptState", err)
	}
	killed, err := mgr.ForceRemove(ctx, "corrupt")
	if err != nil || len(killed) != 1 || killed[0] != pid {
		t.Fatalf("ForceRemove: %v %v, want [%d]", killed, err, pid)
	}
	if !processGone(pid, 5*time.Second) {
		t.Error("firecracker still runs")
	}
	if infos, _ := mgr.List(ctx); len(infos) != 0 {
		t.Errorf("left listed: %+v", infos)
	}
}

// A network record in state.json that names paths of its own is not torn down: reaping leaves
// it, and the paths, alone and reports it.
func TestForgedNetworkRecordIsNotTornDown(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx := context.Background()
	spec := guestSpec(kernel, testguest.ModeHalt)
	spec.Name = "forged"
	m := start(t, mgr, spec, Detached())
	pid := m.PID()
	m.Release()
	victim := t.TempDir()
	os.WriteFile(filepath.Join(victim, "lock"), []byte("keep"), 0o600)
	stPath := filepath.Join(m.Dir(), "state.json")
	var st map[string]any
	b, _ := os.ReadFile(stPath)
	json.Unmarshal(b, &st)
	st["network"] = map[string]any{"owner": "forged", "dir": victim, "netns": map[string]any{"name": "x", "path": filepath.Join(victim, "lock")}}
	b, _ = json.Marshal(st)
	os.WriteFile(stPath, b, 0o600)
	syscall.Kill(pid, syscall.SIGKILL)
	if !processGone(pid, 5*time.Second) {
		t.Fatal("firecracker did not die")
	}
	_, err := mgr.Reap(ctx)
	if err == nil || !strings.Contains(err.Error(), "left alone") {
		t.Errorf("reap: %v, want the forged record reported", err)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "lock")); err != nil || string(b) != "keep" {
		t.Errorf("the victim was touched: %q %v", b, err)
	}
	// Once the record is gone, the directory goes.
	delete(st, "network")
	b, _ = json.Marshal(st)
	os.WriteFile(stPath, b, 0o600)
	if names, err := mgr.Reap(ctx); err != nil || len(names) != 1 {
		t.Errorf("reap after fixing the record: %v %v", names, err)
	}
}

// A log tail never follows a link or waits on a FIFO put where firecracker's log goes (a
// jailed firecracker's log is in a directory of the jail's uid).
func TestLogTailFollowsNoLink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("TOP SECRET\n"), 0o600)
	link := filepath.Join(dir, "firecracker.log")
	os.Symlink(secret, link)
	fifo := filepath.Join(dir, "stderr.log")
	syscall.Mkfifo(fifo, 0o600)
	if got := tailOf(link, 100); got != "" {
		t.Errorf("tail through a link: %q", got)
	}
	if got := tailOf(fifo, 100); got != "" {
		t.Errorf("tail of a FIFO: %q", got)
	}
	os.Remove(link)
	os.WriteFile(link, []byte("a\nb\nlast line\n"), 0o600)
	if got := tailOf(link, 12); got != "last line" {
		t.Errorf("tail: %q", got)
	}
}
