package rundir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/internal/logcap"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/safedir"
)

// File and directory names inside a VM directory.
const (
	LockFile    = "lock"
	StateFile   = "state.json"
	SocketFile  = "api.sock"
	LogFile     = "firecracker.log"
	MetricsFile = "metrics.json"
	SerialFile  = "serial.log"
	// SerialInFile is the FIFO whose writes reach the guest's serial input, when the VM has
	// one.
	SerialInFile = "serial.in"
	StderrFile   = "stderr.log"
	ConfigFile   = "config.json"
	MetadataFile = "metadata.json"
	VsockFile    = "vsock.sock"
	DrivesDir    = "drives"
	// IDFile holds a random token naming this incarnation of the directory, so a later VM
	// that reuses the name (and possibly the inode) is never mistaken for it.
	IDFile = "id"
	// SnapshotMarkFile exists while a snapshot has the VM paused; one left behind says a
	// snapshot was interrupted and the VM stays paused until it is resumed.
	SnapshotMarkFile = "snapshot.pending"
	// StopMarkFile exists once a process other than the VM's owner has stopped or killed it,
	// so that the owner records that the VM was stopped rather than that it crashed.
	StopMarkFile = "stop.requested"
)

// maxStateSize bounds what is read of state.json: a larger one is corrupt.
const maxStateSize = 16 << 20

// StateVersion is the state.json format this package writes and the newest it reads.
const StateVersion = 1

var (
	// ErrExists reports that a VM directory with the name already belongs to a live VM, or to
	// one being created.
	ErrExists = errors.New("vm already exists")
	// ErrNotFound reports that no VM directory has the name.
	ErrNotFound = errors.New("vm not found")
	// ErrCorruptState reports a state.json that cannot be read as a state: the VM shows as
	// unknown, and can still be removed.
	ErrCorruptState = errors.New("corrupt state.json")
	// ErrExited reports a VM that has ended and is kept as exited (State.Exit) until it is
	// removed.
	ErrExited = errors.New("vm has exited")
)

// lockRetry is how often a blocked lock is retried while its ctx allows.
const lockRetry = 2 * time.Millisecond

// Paths are the absolute paths of one VM's files.
type Paths struct {
	Dir       string `json:"dir"`
	Lock      string `json:"lock"`
	State     string `json:"state"`
	APISocket string `json:"api_socket"`
	Log       string `json:"log"`
	Metrics   string `json:"metrics"`
	Serial    string `json:"serial"`
	SerialIn  string `json:"serial_in,omitempty"`
	Stderr    string `json:"stderr"`
	Config    string `json:"config"`
	Metadata  string `json:"metadata"`
	Vsock     string `json:"vsock"`
	Drives    string `json:"drives"`
}

// Drive returns the path of the staged copy of drive id.
func (p Paths) Drive(id string) string { return filepath.Join(p.Drives, id+".img") }

// State is the content of state.json: what another process needs to find, adopt and clean up
// a VM.
type State struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// PID and StartTime identify the firecracker process; StartTime is field 22 of
	// /proc/<pid>/stat, so a reused pid is detected. PID is 0 until the process runs.
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	// Mode is "owned" (firecracker dies with its owner) or "detached".
	Mode string `json:"mode"`
	// OwnerPID is the process that started the VM.
	OwnerPID          int       `json:"owner_pid"`
	Created           time.Time `json:"created"`
	FirecrackerBinary string    `json:"firecracker_binary"`
	// Exe is the firecracker binary with symlinks resolved, as /proc/<pid>/exe shows it; a
	// recorded pid is signalled only when its process runs it (empty: not checked).
	Exe                string `json:"exe,omitempty"`
	FirecrackerVersion string `json:"firecracker_version,omitempty"`
	Paths              Paths  `json:"paths"`
	// BaseImage records the base-image bundle the VM holds in use, if any.
	BaseImage *BaseImage `json:"base_image,omitempty"`
	// Spec is the VM's description as its owner serialised it.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Network is the host network set up for the VM (a netdev.Network as its owner
	// serialised it), if any: reaping tears it down.
	Network json.RawMessage `json:"network,omitempty"`
	// StagingDir is where the VM's drives are staged when that is outside its directory (a
	// staging root of the owner's choosing), if anywhere. Like the rest, it is data: the
	// reader checks it names a staging directory of this VM before using it.
	StagingDir string `json:"staging_dir,omitempty"`
	// Jail describes the jail its firecracker runs in, if the jailer started it.
	Jail *Jail `json:"jail,omitempty"`
	// Keep asks that the VM's record be kept once it ends (as exited, with Exit), until it is
	// removed (Root.RemoveExited), instead of its directory being removed.
	Keep bool `json:"keep,omitempty"`
	// Exit, once set, says the VM has ended and how: the directory then holds only its id,
	// lock, state.json and serial.log, and everything the VM held is released.
	Exit *Exit `json:"exit,omitempty"`
	// RestoredFrom is the snapshot directory the VM was restored from, if any, and
	// SnapshotTaken when that snapshot was taken: the guest's wall clock woke at that time.
	RestoredFrom  string    `json:"restored_from,omitempty"`
	SnapshotTaken time.Time `json:"snapshot_taken,omitzero"`
}

// Exit is how a kept VM ended.
type Exit struct {
	// Code is firecracker's exit code; -1 when a signal killed it or the code is unknown.
	Code int `json:"code"`
	// Signal names the signal that killed firecracker ("SIGKILL"); empty otherwise.
	Signal string `json:"signal,omitempty"`
	// Reason says in words how the VM ended: "guest reset or shut down", "owner died"...
	Reason string `json:"reason"`
	// At is when the end was noticed.
	At time.Time `json:"at"`
	// LogTail holds the last lines of firecracker's log and stderr, when its owner saw it
	// end and they said anything.
	LogTail string `json:"log_tail,omitempty"`
	// MainExitCode is the exit code of the main process of a VM whose init is the agent, as
	// the agent reported it to the VM's owner (0 to 255); nil when none was reported.
	MainExitCode *int `json:"main_exit_code,omitempty"`
}

// Bounds of an Exit's texts: a longer one is corrupt.
const (
	maxReason  = 1024
	MaxLogTail = 8 << 10
)

// BaseImage names a base-image bundle a VM uses and the holder name it registered with.
type BaseImage struct {
	ID     string `json:"id"`
	Holder string `json:"holder"`
	// SSHKey is the bundle's SSH private key, if it has one.
	SSHKey string `json:"ssh_key,omitempty"`
}

// ParseState decodes a state.json body.
func ParseState(b []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse state: %w: %w", ErrCorruptState, err)
	}
	switch {
	case st.Version < 1:
		return nil, fmt.Errorf("parse state: %w: missing or invalid version %d", ErrCorruptState, st.Version)
	case st.Version > StateVersion:
		return nil, fmt.Errorf("parse state: %w: version %d is newer than this smartvm understands (%d); use a newer smartvm", ErrCorruptState, st.Version, StateVersion)
	case checkName(st.Name) != nil:
		return nil, fmt.Errorf("parse state: %w: %w", ErrCorruptState, checkName(st.Name))
	case st.PID < 0:
		return nil, fmt.Errorf("parse state: %w: negative pid %d", ErrCorruptState, st.PID)
	case st.Jail != nil && st.Jail.check(st.Name) != nil:
		return nil, fmt.Errorf("parse state: %w: %w", ErrCorruptState, st.Jail.check(st.Name))
	case st.Exit != nil && (len(st.Exit.Reason) > maxReason || len(st.Exit.LogTail) > MaxLogTail || st.Exit.Code < -1 || st.Exit.Code > 255 ||
		st.Exit.MainExitCode != nil && (*st.Exit.MainExitCode < 0 || *st.Exit.MainExitCode > 255)):
		return nil, fmt.Errorf("parse state: %w: an exit record that is not one smartvm writes", ErrCorruptState)
	}
	return &st, nil
}

// Identity is what the VM's firecracker must match before its recorded pid is believed: it
// runs as this user, runs the recorded executable, and serves the API socket of the VM's own
// directory (st.Paths, which reading a state recomputes from the runtime root, never takes
// from the file).
//
// A jailed firecracker runs as the jail's uid, sees its executable at /<exec name> and was
// given its socket's path inside the chroot. Its executable is not compared: how
// /proc/<pid>/exe shows a file in another mount namespace varies, and the uid is the VM's
// own (leased to it alone).
func (st *State) Identity() proc.Identity {
	if j := st.Jail; j != nil {
		return proc.Identity{UID: j.UID, Flag: "--api-sock", Value: j.APISocket}
	}
	return proc.Identity{UID: uint32(os.Geteuid()), Exe: st.Exe, Flag: "--api-sock", Value: st.Paths.APISocket}
}

// Alive reports whether the state's process runs with the recorded start time and is the
// firecracker this VM directory's owner started (Identity).
func (st *State) Alive() bool {
	if st.PID <= 0 {
		return false
	}
	alive, err := proc.Alive(st.PID, st.StartTime)
	return err == nil && alive && proc.Check(st.PID, st.Identity()) == nil
}

// exiting reports whether the state's process is winding down: its main thread has ended
// but other threads still hold its files, sockets and devices.
func (st *State) exiting() bool {
	exiting, err := proc.Exiting(st.PID, st.StartTime)
	return err == nil && exiting
}

// ReapFunc releases what a dead VM held outside its directory (base-image markers, network
// leases). It runs before the directory is removed; an error keeps the directory for the
// next reap. st is nil when the VM died before it wrote a readable state.json.
type ReapFunc func(ctx context.Context, name string, st *State) error

// Root is a runtime root. Its methods are safe for concurrent use, also by several processes
// sharing the directory. Everything inside it is reached through its open directory
// (internal/safedir): no name is resolved through a symlink or resolved twice.
type Root struct {
	path   string
	dir    *safedir.Dir // the root
	vms    *safedir.Dir // <root>/vms
	onReap ReapFunc
	log    *slog.Logger
	// serialLimit bounds the serial.log an exited VM's record keeps (SetSerialLimit); <= 0:
	// no bound.
	serialLimit int64
}

// SetSerialLimit bounds the serial.log kept in the record of a VM that ends (State.Keep) to
// its last limit bytes, rounded up to whole pages (logcap.Trim); limit <= 0 keeps it whole.
// Call it before the Root is used.
func (r *Root) SetSerialLimit(limit int64) { r.serialLimit = limit }

// Open creates (if needed) and opens the runtime root at path. Every directory on the way
// must be trustworthy (safedir.OpenTrusted): a symlink, another user's directory, or one that
// others can write (other than a sticky one owned by root, such as /dev/shm) is refused with
// an error that says so. onReap, which may be nil, is called for every VM directory reaped
// through this Root. log, which may be nil, hears about waits for a lock another process
// holds.
func Open(path string, onReap ReapFunc, log *slog.Logger) (*Root, error) {
	if path == "" {
		return nil, errors.New("open runtime root: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open runtime root %s: %w", path, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d, err := safedir.OpenTrusted(abs, true)
	if err != nil {
		if errors.Is(err, safedir.ErrUntrusted) {
			return nil, fmt.Errorf("runtime root %s: %w; remove it if you know it, or choose another runtime root (--runtime-dir or SMARTVM_RUNTIME_DIR)", abs, err)
		}
		return nil, fmt.Errorf("open runtime root %s: %w", abs, err)
	}
	vms, err := d.MkdirAll("vms", 0o700)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("open runtime root %s: %w", abs, err)
	}
	return &Root{path: abs, dir: d, vms: vms, onReap: onReap, log: log}, nil
}

// Close releases the root's open directories.
func (r *Root) Close() error { return errors.Join(r.vms.Close(), r.dir.Close()) }

// Path returns the root's absolute path.
func (r *Root) Path() string { return r.path }

// Paths returns the file paths of VM name.
func (r *Root) Paths(name string) Paths {
	dir := filepath.Join(r.path, "vms", name)
	return Paths{
		Dir:       dir,
		Lock:      filepath.Join(dir, LockFile),
		State:     filepath.Join(dir, StateFile),
		APISocket: filepath.Join(dir, SocketFile),
		Log:       filepath.Join(dir, LogFile),
		Metrics:   filepath.Join(dir, MetricsFile),
		Serial:    filepath.Join(dir, SerialFile),
		SerialIn:  filepath.Join(dir, SerialInFile),
		Stderr:    filepath.Join(dir, StderrFile),
		Config:    filepath.Join(dir, ConfigFile),
		Metadata:  filepath.Join(dir, MetadataFile),
		Vsock:     filepath.Join(dir, VsockFile),
		Drives:    filepath.Join(dir, DrivesDir),
	}
}

// Lock waits: after lockNotice the wait is logged with the holder's pid, and after lockLimit
// it fails, so a holder that hangs (or was stopped with SIGSTOP) cannot hold every command
// forever.
const (
	lockNotice = 500 * time.Millisecond
	lockLimit  = 30 * time.Second
)

// lock takes root.lock, waiting while ctx allows and at most lockLimit; a wait longer than
// lockNotice is logged once, naming the process that holds the lock.
func (r *Root) lock(ctx context.Context) (*safedir.Lock, error) {
	f, err := r.dir.OpenFile("root.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock runtime root %s: %w", r.path, err)
	}
	begin := time.Now()
	noticed := false
	for {
		ok, err := safedir.Flock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock runtime root %s: %w", r.path, err)
		}
		if ok {
			return safedir.LockOf(f), nil
		}
		waited := time.Since(begin)
		if !noticed && waited >= lockNotice {
			noticed = true
			r.log.Warn("waiting for the runtime root's lock", "root", r.path, "held_by", holderName(f))
		}
		if waited >= lockLimit {
			holder := holderName(f)
			f.Close()
			return nil, fmt.Errorf("lock runtime root %s: held by %s for %s; if that process hangs or is stopped, end it (kill -CONT, or kill)", r.path, holder, lockLimit)
		}
		t := time.NewTimer(lockRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			holder := holderName(f)
			f.Close()
			return nil, fmt.Errorf("lock runtime root %s (held by %s): %w", r.path, holder, ctx.Err())
		case <-t.C:
		}
	}
}

// holderName describes the process that holds f's lock: "pid 123 (smartvm)".
func holderName(f *os.File) string {
	pid := safedir.LockHolder(f)
	if pid == 0 {
		return "another process"
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return fmt.Sprintf("pid %d (%s)", pid, strings.TrimSpace(string(comm)))
}

// StoppedOwner returns the pid of the process that holds the VM's lock when that process is
// stopped (SIGSTOP): it will not clean up until it is continued. It returns 0 otherwise.
func (d *Dir) StoppedOwner() int {
	f, err := d.root.vms.OpenFile(d.name+"/"+LockFile, os.O_RDONLY, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	if pid := safedir.LockHolder(f); pid > 0 && proc.Stopped(pid) {
		return pid
	}
	return 0
}

// lockHolder describes the process that holds VM name's lock.
func (r *Root) lockHolder(name string) string {
	f, err := r.vms.OpenFile(name+"/"+LockFile, os.O_RDONLY, 0)
	if err != nil {
		return "another process"
	}
	defer f.Close()
	return holderName(f)
}

// checkName refuses names that are not a single path element.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-") {
		return fmt.Errorf("invalid vm name %q", name)
	}
	return nil
}

// Dir is one VM's directory, as created (and owned) or looked up.
type Dir struct {
	Paths
	root *Root
	name string
	id   string        // the content of IDFile
	lock *safedir.Lock // held by the owner; nil for a looked-up directory
}

// Name returns the VM's name.
func (d *Dir) Name() string { return d.name }

// Owned reports whether this Dir holds the VM's lock.
func (d *Dir) Owned() bool { return d.lock != nil }

// Create makes the directory of a new VM called name, with its drives folder, and takes its
// lock, which the returned Dir holds until Remove or Unlock. A directory left by a dead VM
// of the same name is reaped first. It returns an error wrapping ErrExists when a live VM,
// or one being created, has the name.
func (r *Root) Create(ctx context.Context, name string) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("create vm dir: %w", err)
	}
	var d *Dir
	err := r.retryHeld(ctx, heldWait, func(last bool) (bool, error) {
		if _, err := r.vms.Lstat(name); err == nil {
			switch res, err := r.reapLocked(ctx, name); {
			case err != nil:
				return false, err
			case res == held && !last:
				return true, nil
			case res == exited:
				return false, fmt.Errorf("%w: %w; remove it with smartvm rm %s (Manager.Remove) to reuse the name", ErrExists, ErrExited, name)
			case res != reaped && res != gone && res != recorded:
				return false, ErrExists
			}
		}
		var err error
		d, err = r.create(name)
		return false, err
	})
	if err != nil {
		return nil, fmt.Errorf("create vm dir %s: %w", name, err)
	}
	return d, nil
}

// create makes and locks the directory of VM name, which does not exist. It is built under
// a temporary name and renamed into place whole, so a VM directory always has its id and
// lock files. The caller holds root.lock.
func (r *Root) create(name string) (*Dir, error) {
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	tmp := newPrefix + id
	fail := func(err error) (*Dir, error) {
		r.vms.RemoveAll(tmp)
		return nil, err
	}
	if err := r.vms.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	f, err := r.vms.OpenFile(tmp+"/"+IDFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	_, err = f.WriteString(id)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	if err := r.vms.Mkdir(tmp+"/"+DrivesDir, 0o700); err != nil {
		return fail(err)
	}
	l, ok, err := r.vms.TryLock(tmp+"/"+LockFile, true)
	if err != nil {
		return fail(err)
	}
	if !ok {
		return fail(errors.New("lock held by another process"))
	}
	if err := r.vms.Rename(tmp, r.vms, name); err != nil {
		l.Unlock()
		return fail(err)
	}
	return &Dir{Paths: r.Paths(name), root: r, name: name, id: id, lock: l}, nil
}

// Entries of vms/ that are not VM directories: one being built, and one being removed.
const (
	newPrefix   = ".new-"
	trashPrefix = ".trash-"
)

// Dead owners: a VM whose process is gone but whose lock is still held is being cleaned up
// by its owner, or its owner is dying: an owner killed with SIGKILL loses its lock a moment
// after its Firecracker dies of the parent-death signal. A Firecracker that was just killed
// also still holds its devices and sockets while its threads wind down. Reaping, creating
// and looking at such a VM waits up to heldWait (trying every heldPoll, with root.lock
// released meanwhile so an owner can finish its cleanup) before it leaves the VM alone.
const (
	heldWait = 200 * time.Millisecond
	heldPoll = 5 * time.Millisecond
)

// removeWait is how long RemoveExited, asked to remove VM name, waits for an owner that still
// holds the VM after its process died: a detached VM's supervisor, under load, can take
// longer than heldWait to record the end of the VM that rm -f just killed.
const removeWait = 5 * time.Second

// retryHeld runs fn with root.lock held, and again after a pause of heldPoll (with root.lock
// released) while fn asks to retry, for up to wait or until ctx ends. last tells fn that
// this is its last run: it must then decide.
func (r *Root) retryHeld(ctx context.Context, wait time.Duration, fn func(last bool) (retry bool, err error)) error {
	deadline := time.Now().Add(wait)
	for {
		last := ctx.Err() != nil || !time.Now().Before(deadline)
		rl, err := r.lock(ctx)
		if err != nil {
			return err
		}
		retry, err := fn(last)
		rl.Unlock()
		if err != nil || !retry || last {
			return err
		}
		t := time.NewTimer(heldPoll)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// Lookup returns the directory of VM name, not owned, with its state. It returns an error
// wrapping ErrNotFound when there is no such directory or it holds no state yet, and one
// wrapping ErrCorruptState (with the Dir) when its state.json cannot be read as a state.
func (r *Root) Lookup(name string) (*Dir, *State, error) {
	if err := checkName(name); err != nil {
		return nil, nil, fmt.Errorf("look up vm: %w: %w", err, ErrNotFound)
	}
	id, err := r.readID(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("look up vm %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up vm %s: %w", name, err)
	}
	d := &Dir{Paths: r.Paths(name), root: r, name: name, id: id}
	st, err := r.readState(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("look up vm %s: no state yet: %w", name, ErrNotFound)
	}
	if err != nil {
		return d, nil, fmt.Errorf("look up vm %s: %w", name, err)
	}
	return d, st, nil
}

// readID reads VM name's id file, which must hold the 32 hex digits create writes.
func (r *Root) readID(name string) (string, error) {
	b, err := r.vms.ReadFile(name+"/"+IDFile, 64)
	if err != nil {
		return "", err
	}
	if len(b) != 32 || strings.Trim(string(b), "0123456789abcdef") != "" {
		return "", fmt.Errorf("vm %s: its id file is not one smartvm wrote", name)
	}
	return string(b), nil
}

// readState reads and parses VM name's state.json. The paths in it are replaced by the ones
// the runtime root gives the name: what the file says is data, never where to look. A state
// that does not parse, or names another VM, wraps ErrCorruptState.
func (r *Root) readState(name string) (*State, error) {
	b, err := r.vms.ReadFile(name+"/"+StateFile, maxStateSize)
	if err != nil {
		if errors.Is(err, safedir.ErrUntrusted) {
			return nil, fmt.Errorf("%w: %w", ErrCorruptState, err)
		}
		return nil, err
	}
	st, err := ParseState(b)
	if err != nil {
		return nil, err
	}
	if st.Name != name {
		return nil, fmt.Errorf("%w: it names vm %q", ErrCorruptState, st.Name)
	}
	st.Paths = r.Paths(name)
	if st.Jail != nil {
		st.Paths = st.Paths.jailPaths(st.Jail)
	}
	return st, nil
}

// WriteState writes state.json atomically: a temporary file in the same directory, fsync,
// rename, then an fsync of the directory.
func (d *Dir) WriteState(st *State) error {
	st.Version = StateVersion
	st.Name = d.name
	st.Paths = d.Paths
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write state of vm %s: %w", d.name, err)
	}
	if err := d.root.vms.WriteFileAtomic(d.name+"/"+StateFile, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state of vm %s: %w", d.name, err)
	}
	return nil
}

// Unlock releases the VM's lock (a no-op for a looked-up Dir). The directory stays; the next
// reap removes it once the VM's process is gone.
func (d *Dir) Unlock() error {
	if d.lock == nil {
		return nil
	}
	if err := d.lock.Unlock(); err != nil {
		return fmt.Errorf("unlock vm dir %s: %w", d.name, err)
	}
	d.lock = nil
	return nil
}

// Remove deletes the VM's directory and everything in it, then releases the lock. It never
// touches a newer directory that reuses the name, and does nothing if the directory is
// already gone (another process cleaned it up), so it is safe to call more than once.
func (d *Dir) Remove(ctx context.Context) error {
	rl, err := d.root.lock(ctx)
	if err != nil {
		return fmt.Errorf("remove vm dir %s: %w", d.name, err)
	}
	defer rl.Unlock()
	var errs []error
	id, err := d.root.readID(d.name)
	if err == nil && id == d.id {
		errs = append(errs, d.root.removeLocked(d.name))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove vm dir %s: %w", d.name, err))
	}
	errs = append(errs, d.Unlock())
	return errors.Join(errs...)
}

// removeLocked takes VM name's directory out of vms/ in one rename, then deletes it: a
// removal cut short leaves a trash entry the next reap finishes, never a VM directory
// without its id or lock. The caller holds root.lock.
func (r *Root) removeLocked(name string) error {
	var b [8]byte
	rand.Read(b[:])
	trash := trashPrefix + hex.EncodeToString(b[:])
	if err := r.vms.Rename(name, r.vms, trash); err != nil {
		return fmt.Errorf("remove vm dir %s: %w", name, err)
	}
	if err := r.vms.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove vm dir %s: %w", name, err)
	}
	return nil
}

// reservedNames are the entries of a VM directory that this package and its users manage.
var reservedNames = []string{LockFile, StateFile, SocketFile, LogFile, MetricsFile, SerialFile,
	SerialInFile, StderrFile, ConfigFile, MetadataFile, VsockFile, DrivesDir, IDFile, SnapshotMarkFile, StopMarkFile}

// CreateFile creates a new file called name (mode 0600, opened for appending) in this
// incarnation of the VM's directory, so that it is removed with the directory. It takes
// root.lock, so the directory cannot be removed halfway through, and fails with an error
// wrapping ErrNotFound when the directory is gone or belongs to a newer VM of the same name.
// name must be a plain file name that is none of the directory's own entries.
func (d *Dir) CreateFile(ctx context.Context, name string) (*os.File, error) {
	if err := d.checkOwnName("create", name); err != nil {
		return nil, err
	}
	return d.createFile(ctx, name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND)
}

// CreateWritable is CreateFile for a file written at offsets of its own (WriteAt), such as a
// merged memory file: opened for reading and writing, not appending.
func (d *Dir) CreateWritable(ctx context.Context, name string) (*os.File, error) {
	if err := d.checkOwnName("create", name); err != nil {
		return nil, err
	}
	return d.createFile(ctx, name, os.O_RDWR|os.O_CREATE|os.O_EXCL)
}

// checkOwnName refuses a name that CreateFile and WriteNote may not use for op: one that is
// not a plain file name, or is one of the directory's own entries.
func (d *Dir) checkOwnName(op, name string) error {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." || slices.Contains(reservedNames, name) {
		return fmt.Errorf("%s %q in vm dir %s: want a plain file name other than the directory's own entries", op, name, d.name)
	}
	return nil
}

func (d *Dir) createFile(ctx context.Context, name string, flag int) (*os.File, error) {
	rl, err := d.lockLive(ctx)
	if err != nil {
		return nil, fmt.Errorf("create %s in vm dir %s: %w", name, d.name, err)
	}
	defer rl.Unlock()
	f, err := d.root.vms.OpenFile(d.name+"/"+name, flag, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s in vm dir %s: %w", name, d.name, err)
	}
	return f, nil
}

// LinkFile makes f, open on a file of another VM directory of this root, this directory's
// console, stderr or serial input (SerialFile, StderrFile, SerialInFile), which must not
// exist: a warm jail's firecracker writes to the files it was started with, and they become
// those of the VM that takes it. It links under root.lock, into this directory only while it
// is this incarnation's (as CreateFile writes).
func (d *Dir) LinkFile(ctx context.Context, f *os.File, name string) error {
	if name != SerialFile && name != StderrFile && name != SerialInFile {
		return fmt.Errorf("link %q into vm dir %s: only its console, stderr and serial input are linked", name, d.name)
	}
	rl, err := d.lockLive(ctx)
	if err != nil {
		return fmt.Errorf("link %s into vm dir %s: %w", name, d.name, err)
	}
	defer rl.Unlock()
	return d.root.vms.Link(f, d.name+"/"+name)
}

// lockLive takes root.lock for a write into this VM's directory and checks under it that the
// directory is still this incarnation's (else an error wrapping ErrNotFound) and that the VM
// is not kept as exited (ErrExited): a removal or Keep cannot then happen halfway through the
// write, and a newer VM of the same name never gets the file. The caller releases the lock.
func (d *Dir) lockLive(ctx context.Context) (*safedir.Lock, error) {
	rl, err := d.root.lock(ctx)
	if err != nil {
		return nil, err
	}
	if id, err := d.root.readID(d.name); err != nil || id != d.id {
		rl.Unlock()
		return nil, fmt.Errorf("the vm has ended and its directory is gone: %w", ErrNotFound)
	}
	if st, err := d.root.readState(d.name); err == nil && st.Exit != nil {
		rl.Unlock()
		return nil, fmt.Errorf("the vm has ended and is kept as exited: %w", ErrExited)
	}
	return rl, nil
}

// MarkSnapshot records that a snapshot is pausing the VM (SnapshotMarkFile), until
// UnmarkSnapshot: a snapshotting process that is killed leaves the mark, and the VM is then
// reported as paused by an interrupted snapshot.
func (d *Dir) MarkSnapshot(ctx context.Context) error {
	f, err := d.createFile(ctx, SnapshotMarkFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f.Close()
}

// UnmarkSnapshot removes the mark MarkSnapshot left, if any.
func (d *Dir) UnmarkSnapshot() error {
	err := d.root.vms.Remove(d.name + "/" + SnapshotMarkFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// MarkStop records that a process is stopping or killing the VM (StopMarkFile).
func (d *Dir) MarkStop(ctx context.Context) error {
	f, err := d.createFile(ctx, StopMarkFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	return f.Close()
}

// StopMarked reports whether MarkStop was called on the VM.
func (d *Dir) StopMarked() bool {
	_, err := d.root.vms.Lstat(d.name + "/" + StopMarkFile)
	return err == nil
}

// SnapshotMarked reports whether a snapshot mark is left in the VM's directory.
func (d *Dir) SnapshotMarked() bool { return d.root.SnapshotMarked(d.name) }

// SnapshotMarked reports whether a snapshot mark is left in VM name's directory.
func (r *Root) SnapshotMarked(name string) bool {
	if checkName(name) != nil {
		return false
	}
	_, err := r.vms.Lstat(name + "/" + SnapshotMarkFile)
	return err == nil
}

// OpenFile opens file name of the VM's directory for reading, refusing anything but a
// regular file smartvm's user owns (a FIFO, a socket or a link is never followed).
func (d *Dir) OpenFile(name string) (*os.File, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("open %q in vm dir %s: want a plain file name", name, d.name)
	}
	return d.root.vms.OpenRegular(d.name + "/" + name)
}

// Names returns the names of all VM directories, sorted. Entries of vms/ that smartvm does
// not make (a symlink, a file, a name it would refuse) are left out.
func (r *Root) Names() ([]string, error) {
	ents, err := r.vms.ReadDir(".")
	if err != nil {
		return nil, fmt.Errorf("list vms in %s: %w", r.path, err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsDir() && checkName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// strays returns the entries of vms/ that are neither VM directories nor smartvm's own
// temporary ones, for reporting: nothing of them is touched.
func (r *Root) strays() []string {
	ents, err := r.vms.ReadDir(".")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsDir() && (checkName(n) == nil || strings.HasPrefix(n, newPrefix) || strings.HasPrefix(n, trashPrefix)) {
			continue
		}
		out = append(out, n)
	}
	return out
}

// Reap removes the directory of every VM whose process is gone and whose lock nobody
// holds, calling the root's ReapFunc for each first. It returns the names it removed. A VM
// whose process is gone while its lock is still held gets up to 200 ms to have the lock
// released (its owner is cleaning up, or dying), and so does one whose process is still
// winding down after its main thread ended (proc.Exiting). A VM that cannot be reaped now is left for
// the next call, and its error is joined into the result. A directory that does not carry
// smartvm's proof (see reapLocked), and anything else in vms/ that smartvm did not make, is
// left alone and reported in the error.
func (r *Root) Reap(ctx context.Context) ([]string, error) {
	var names, reapedNames []string
	var errs []error
	first := true
	err := r.retryHeld(ctx, heldWait, func(last bool) (bool, error) {
		if first {
			first = false
			var err error
			if names, err = r.Names(); err != nil {
				return false, err
			}
			errs = append(errs, r.emptyTrashLocked())
			for _, s := range r.strays() {
				errs = append(errs, fmt.Errorf("%s: not a directory smartvm made; left alone (remove it by hand if you know what it is)", filepath.Join(r.path, "vms", s)))
			}
		}
		var again []string
		for _, name := range names {
			res, err := r.reapLocked(ctx, name)
			switch {
			case err != nil:
				errs = append(errs, err)
			case res == reaped || res == recorded:
				reapedNames = append(reapedNames, name)
			case res == held:
				again = append(again, name)
			}
		}
		names = again
		return len(again) > 0, nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("reap: %w", err))
	}
	return reapedNames, errors.Join(errs...)
}

// emptyTrashLocked deletes what removals and creations cut short left in vms/. Under
// root.lock nobody is using those entries. The caller holds root.lock.
func (r *Root) emptyTrashLocked() error {
	ents, err := r.vms.ReadDir(".")
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if n := e.Name(); e.Type().IsDir() && (strings.HasPrefix(n, newPrefix) || strings.HasPrefix(n, trashPrefix)) {
			errs = append(errs, r.vms.RemoveAll(n))
		}
	}
	return errors.Join(errs...)
}

// reapResult is what reapLocked found and did.
type reapResult int

const (
	kept     reapResult = iota // left alone: the VM is alive, or being created
	reaped                     // removed
	gone                       // there was no directory
	held                       // left alone for now: its process is gone but its lock is held, or it is still exiting
	recorded                   // its VM had ended: released, and kept as exited (State.Keep)
	exited                     // left alone: the record of a VM that has ended (State.Exit)
)

// proof checks that vms/name is a directory smartvm made: a directory of this user, mode
// 0700, holding the id file create writes and a lock file, with no symlink, no entry of
// another user and nothing of another filesystem anywhere beneath it.
func (r *Root) proof(name string) error {
	fi, err := r.vms.Lstat(name)
	if err != nil {
		return err
	}
	if !fi.Mode.IsDir() || fi.UID != r.vms.UID() || fi.Mode.Perm() != 0o700 {
		return fmt.Errorf("it is not a private directory of smartvm's user (%v, uid %d)", fi.Mode, fi.UID)
	}
	if _, err := r.readID(name); errors.Is(err, fs.ErrNotExist) {
		return errors.New("no id file")
	} else if err != nil {
		return fmt.Errorf("no valid id file: %w", err)
	}
	if li, err := r.vms.Lstat(name + "/" + LockFile); err != nil || !li.Mode.IsRegular() {
		return errors.New("no lock file")
	}
	return r.vms.CheckTree(name)
}

// reapLocked removes VM name's directory if it carries smartvm's proof, nobody holds its
// lock and its process is gone. The caller holds root.lock.
func (r *Root) reapLocked(ctx context.Context, name string) (reapResult, error) {
	if _, err := r.vms.Lstat(name); errors.Is(err, fs.ErrNotExist) {
		return gone, nil
	}
	// The proof (a walk of the whole directory) is checked only before a removal: a live
	// VM, or one its owner holds, is left alone anyway, and every command reaps.
	notOurs := func(err error) error {
		return fmt.Errorf("vm directory %s does not look like one smartvm made (%w); left alone: remove it by hand if you know what it is", filepath.Join(r.path, "vms", name), err)
	}
	l, ok, err := r.vms.TryLock(name+"/"+LockFile, false)
	if errors.Is(err, fs.ErrNotExist) {
		return kept, notOurs(errors.New("no lock file"))
	}
	if err != nil {
		return kept, fmt.Errorf("reap vm %s: %w", name, err)
	}
	if !ok {
		// Its owner holds it. A recorded process that is gone means the owner is cleaning
		// up, or is dying itself.
		if st, err := r.readState(name); err == nil && st.PID > 0 && !st.Alive() {
			return held, nil
		}
		return kept, nil
	}
	defer l.Unlock()
	st, err := r.readState(name)
	switch {
	case err == nil && st.Exit != nil:
		return exited, nil
	case errors.Is(err, fs.ErrNotExist):
		// No state: the owner died before the VM ran (the lock is free), so nothing outside
		// the directory was recorded as held.
		st = nil
	case err != nil:
		// An unreadable state names no process to trust; a firecracker still serving the
		// directory's socket, or still running in a jail of the VM's name, keeps it.
		if len(r.FindProcesses(name)) > 0 || jailServes(name) {
			return kept, nil
		}
		st = nil
	case st.Alive():
		return kept, nil // a detached VM whose starter has exited
	case st.exiting():
		return held, nil // killed a moment ago: its threads still hold its TAPs and sockets
	}
	if err := r.proof(name); err != nil {
		return kept, notOurs(err)
	}
	if r.onReap != nil {
		if err := r.onReap(ctx, name, st); err != nil {
			return kept, fmt.Errorf("reap vm %s: %w", name, err)
		}
	}
	if st != nil && st.Keep && st.PID > 0 {
		// Nobody saw it end, so how is unknown; an owned VM's owner died (the VM dies with
		// it), a detached one ended while no smartvm process watched it.
		e := Exit{Code: -1, Reason: ReasonUnwatched, At: time.Now().UTC()}
		if st.Mode == "owned" {
			e.Reason = ReasonOwnerDied
		}
		if err := r.keepLocked(name, st, e); err != nil {
			return kept, fmt.Errorf("reap vm %s: %w", name, err)
		}
		return recorded, nil
	}
	if err := r.removeLocked(name); err != nil {
		return kept, fmt.Errorf("reap vm %s: %w", name, err)
	}
	return reaped, nil
}

// Reasons a reap records for a kept VM that nobody saw end.
const (
	ReasonOwnerDied = "owner died: the smartvm process that ran the vm ended, and the vm with it (exit status unknown)"
	ReasonUnwatched = "ended while no smartvm process watched it (exit status unknown)"
)

// recordEntries are what the record of an exited VM keeps of its directory.
var recordEntries = []string{IDFile, LockFile, StateFile, SerialFile}

// keepLocked turns VM name's directory into the record of an exited VM: it removes every
// entry but recordEntries (staged drives, sockets, logs, config), bounds serial.log to the
// root's serial limit and writes st with e as its exit. The caller holds root.lock and the
// VM's lock, and has released what the VM held outside its directory.
func (r *Root) keepLocked(name string, st *State, e Exit) error {
	ents, err := r.vms.ReadDir(name)
	if err != nil {
		return fmt.Errorf("keep the record of vm %s: %w", name, err)
	}
	var errs []error
	for _, ent := range ents {
		if !slices.Contains(recordEntries, ent.Name()) {
			errs = append(errs, r.vms.RemoveAll(name+"/"+ent.Name()))
		}
	}
	errs = append(errs, r.trimSerial(name))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("keep the record of vm %s: %w", name, err)
	}
	if len(e.LogTail) > MaxLogTail {
		e.LogTail = e.LogTail[len(e.LogTail)-MaxLogTail:]
	}
	if len(e.Reason) > maxReason {
		e.Reason = e.Reason[:maxReason]
	}
	st.Exit = &e
	if err := r.writeStateLocked(name, st); err != nil {
		return fmt.Errorf("keep the record of vm %s: %w", name, err)
	}
	return nil
}

// writeStateLocked replaces VM name's state.json with st, atomically. The caller holds
// root.lock.
func (r *Root) writeStateLocked(name string, st *State) error {
	st.Version = StateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return r.vms.WriteFileAtomic(name+"/"+StateFile, append(b, '\n'), 0o600)
}

// UpdateState changes the recorded state of this VM, which runs, from another process than
// its owner too: under root.lock (which Keep and reaping hold while they write state.json), it
// reads state.json, lets fn change it, and writes it back atomically. It fails with an error
// wrapping ErrNotFound when the directory is gone or belongs to a newer VM of the same name,
// ErrExited once the VM is kept as exited, and ErrCorruptState for a state.json that cannot
// be read; fn's error leaves the file as it is. The owner's own writes (WriteState) happen
// while the VM starts, before it is handed to anyone.
func (d *Dir) UpdateState(ctx context.Context, fn func(*State) error) error {
	st, rl, err := d.lockState(ctx)
	if err != nil {
		return fmt.Errorf("update state of vm %s: %w", d.name, err)
	}
	defer rl.Unlock()
	if st.Exit != nil {
		return fmt.Errorf("update state of vm %s: the vm has ended and is kept as exited: %w", d.name, ErrExited)
	}
	if err := fn(st); err != nil {
		return fmt.Errorf("update state of vm %s: %w", d.name, err)
	}
	st.Name = d.name
	if err := d.root.writeStateLocked(d.name, st); err != nil {
		return fmt.Errorf("update state of vm %s: %w", d.name, err)
	}
	return nil
}

// trimSerial bounds VM name's serial.log to the root's serial limit. A serial.log that is
// missing, or not a regular file, is left alone.
func (r *Root) trimSerial(name string) error {
	if r.serialLimit <= 0 {
		return nil
	}
	f, err := r.vms.OpenFile(name+"/"+SerialFile, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil // no log, or not one a file can be (a FIFO without a reader)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if _, err := logcap.Trim(f, r.serialLimit); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}

// Keep turns the directory of this VM, which has ended, into its record as exited (see
// State.Exit): everything but its id, lock, state.json and serial.log (bounded by the root's
// serial limit) is removed, and state.json records e. Then it releases the VM's lock. The
// caller has released what the VM held outside its directory. It fails with an error wrapping
// ErrNotFound when the directory is gone or belongs to a newer VM of the same name.
func (d *Dir) Keep(ctx context.Context, e Exit) error {
	st, rl, err := d.lockState(ctx)
	if err != nil {
		return fmt.Errorf("keep the record of vm %s: %w", d.name, err)
	}
	defer rl.Unlock()
	if err := d.root.keepLocked(d.name, st, e); err != nil {
		return err
	}
	return d.Unlock()
}

// lockState takes root.lock and reads this VM's state under it; the caller releases the lock.
// It fails with an error wrapping ErrNotFound when the directory is gone or belongs to a newer
// VM of the same name.
func (d *Dir) lockState(ctx context.Context) (*State, *safedir.Lock, error) {
	rl, err := d.root.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	if id, err := d.root.readID(d.name); err != nil || id != d.id {
		rl.Unlock()
		return nil, nil, fmt.Errorf("its directory is gone: %w", ErrNotFound)
	}
	st, err := d.root.readState(d.name)
	if err != nil {
		rl.Unlock()
		return nil, nil, err
	}
	return st, rl, nil
}

// RemoveExited removes the record of VM name, which has exited (State.Exit); a kept VM whose
// process is gone is recorded first (see Reap), and one that is not kept is reaped. It
// returns an error wrapping ErrNotFound when there is no such VM, ErrExists when the VM runs
// (or its owner still holds it after removeWait, or ctx's end, once its process is gone), and
// ErrCorruptState when its state.json cannot be read while a firecracker still serves its
// socket (one that nothing serves is removed, as Reap does).
func (r *Root) RemoveExited(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("remove vm: %w: %w", err, ErrNotFound)
	}
	err := r.retryHeld(ctx, removeWait, func(last bool) (bool, error) {
		res, err := r.reapLocked(ctx, name)
		switch {
		case err != nil:
			return false, err
		case res == gone:
			return false, ErrNotFound
		case res == reaped:
			return false, nil
		case res == held && !last:
			return true, nil
		case res == kept || res == held:
			if _, err := r.readState(name); errors.Is(err, ErrCorruptState) {
				return false, err
			}
			return false, fmt.Errorf("it has not exited (it runs, or %s holds it): %w", r.lockHolder(name), ErrExists)
		}
		l, ok, err := r.vms.TryLock(name+"/"+LockFile, false)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("%s holds it: %w", r.lockHolder(name), ErrExists)
		}
		defer l.Unlock()
		if err := r.proof(name); err != nil {
			return false, fmt.Errorf("%s does not look like a vm directory smartvm made (%w); left alone", filepath.Join(r.path, "vms", name), err)
		}
		return false, r.removeLocked(name)
	})
	if err != nil {
		return fmt.Errorf("remove vm %s: %w", name, err)
	}
	return nil
}

// Active reports whether a directory for VM name exists that is not the record of an exited
// VM: the VM runs, is being created or cleaned up, or has died and is not reaped yet.
func (r *Root) Active(name string) bool {
	if !r.Has(name) {
		return false
	}
	st, err := r.readState(name)
	return err != nil || st.Exit == nil
}

// FindProcesses returns the pids of this user's processes that serve VM name's API socket:
// the way to find its firecracker when its state.json cannot be trusted or read.
func (r *Root) FindProcesses(name string) []int {
	return proc.FindByArgs(uint32(os.Geteuid()), "--api-sock", r.Paths(name).APISocket)
}

// States returns the state of every VM whose process is alive, sorted by name, and the names
// of VMs whose state.json is corrupt (ErrCorruptState). VMs still starting (no pid yet), dead
// ones and those kept as exited are left out.
func (r *Root) States() (states []*State, corrupt []string, err error) {
	states, _, corrupt, err = r.Records()
	return states, corrupt, err
}

// Records reads every VM's state.json once and returns, sorted by name, the states of the VMs
// whose process is alive (as States), those of the VMs kept as exited (State.Exit), and the
// names of the VMs whose state.json is corrupt.
func (r *Root) Records() (live, exited []*State, corrupt []string, err error) {
	names, err := r.Names()
	if err != nil {
		return nil, nil, nil, err
	}
	for _, name := range names {
		st, err := r.readState(name)
		switch {
		case errors.Is(err, ErrCorruptState):
			corrupt = append(corrupt, name)
		case err != nil:
		case st.Exit != nil:
			exited = append(exited, st)
		case st.Alive():
			live = append(live, st)
		}
	}
	return live, exited, corrupt, nil
}

// ID returns the random token that names this incarnation of the directory.
func (d *Dir) ID() string { return d.id }

// Reap removes the directory as Root.Reap would: only when nobody holds the VM's lock and its
// process is gone (waiting up to 200 ms for the lock of a VM whose process is gone); a kept
// VM (State.Keep) becomes its exit record instead. It reports whether the VM is done with
// afterwards: its directory reaped now, removed earlier, or replaced by a newer VM of the same
// name (which Reap leaves alone), or the VM kept as exited.
func (d *Dir) Reap(ctx context.Context) (bool, error) {
	isGone := false
	err := d.root.retryHeld(ctx, heldWait, func(last bool) (bool, error) {
		id, err := d.root.readID(d.name)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && id != d.id) {
			isGone = true
			return false, nil
		}
		if err != nil {
			return false, err
		}
		res, err := d.root.reapLocked(ctx, d.name)
		isGone = res == reaped || res == gone || res == recorded || res == exited
		return res == held, err
	})
	if err != nil {
		return false, fmt.Errorf("reap vm %s: %w", d.name, err)
	}
	return isGone, nil
}

// ForceRemove removes VM name whatever its state.json says, for a VM whose state is corrupt:
// it kills (SIGKILL) this user's processes that serve the directory's API socket, waits for
// them to end, then removes the directory, calling the ReapFunc with a nil state first. When
// the VM's owner holds its lock, the owner removes the directory once the VM has ended;
// ForceRemove waits for that while ctx allows. The directory must carry smartvm's proof. It
// returns the pids it killed.
func (r *Root) ForceRemove(ctx context.Context, name string) ([]int, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("remove vm: %w: %w", err, ErrNotFound)
	}
	id, err := r.readID(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove vm %s: %w", name, ErrNotFound)
	}
	if err := r.proof(name); err != nil {
		return nil, fmt.Errorf("remove vm %s: %s does not look like a vm directory smartvm made (%w); left alone", name, filepath.Join(r.path, "vms", name), err)
	}
	ident := proc.Identity{UID: uint32(os.Geteuid()), Flag: "--api-sock", Value: r.Paths(name).APISocket}
	killed := killServing(ctx, r.FindProcesses(name), ident)
	for {
		var owner string
		err := r.Locked(ctx, func() error {
			if cur, err := r.readID(name); err != nil || cur != id {
				return nil // gone, or a newer VM of the name: done
			}
			l, ok, err := r.vms.TryLock(name+"/"+LockFile, false)
			if err != nil {
				return err
			}
			if !ok {
				owner = r.lockHolder(name)
				return nil
			}
			defer l.Unlock()
			if r.onReap != nil {
				if err := r.onReap(ctx, name, nil); err != nil {
					return err
				}
			}
			return r.removeLocked(name)
		})
		if err != nil {
			return killed, fmt.Errorf("remove vm %s: %w", name, err)
		}
		if owner == "" {
			return killed, nil
		}
		// The owner removes the directory once it sees the VM end.
		select {
		case <-ctx.Done():
			return killed, fmt.Errorf("remove vm %s: its firecracker is killed, but its owner (%s) has not cleaned up: %w", name, owner, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Locked runs fn while holding root.lock, so that no VM directory is created, removed or
// reaped meanwhile (fn must not call the Root's other methods, which take the lock too).
func (r *Root) Locked(ctx context.Context, fn func() error) error {
	rl, err := r.lock(ctx)
	if err != nil {
		return err
	}
	defer rl.Unlock()
	return fn()
}

// Held reports whether a live process holds VM name's directory: its owner, or one creating or
// removing it. A name with no directory (or lock) is not held.
func (r *Root) Held(name string) bool {
	if checkName(name) != nil {
		return false
	}
	l, ok, err := r.vms.TryLock(name+"/"+LockFile, false)
	if err != nil {
		return false
	}
	if ok {
		l.Unlock()
	}
	return !ok
}

// Has reports whether a directory for VM name exists: the VM runs, is being created or
// cleaned up, or has died and is not reaped yet.
func (r *Root) Has(name string) bool {
	if checkName(name) != nil {
		return false
	}
	_, err := r.vms.Lstat(name)
	return err == nil
}

// cacheDir is the root's directory for small private files of smartvm's own (such as the
// firecracker version cache).
const cacheDir = "cache"

// ReadCache reads file name (a plain file name) of the root's cache directory, refusing a file
// that is not a regular file of this user or is larger than limit. A missing file wraps
// fs.ErrNotExist.
func (r *Root) ReadCache(name string, limit int64) ([]byte, error) {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("cache file %q: want a plain file name", name)
	}
	return r.dir.ReadFile(cacheDir+"/"+name, limit)
}

// WriteCache replaces file name of the root's cache directory with data, atomically, mode
// 0600.
func (r *Root) WriteCache(name string, data []byte) error {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("cache file %q: want a plain file name", name)
	}
	if err := r.dir.Mkdir(cacheDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return r.dir.WriteFileAtomic(cacheDir+"/"+name, data, 0o600)
}

// WriteNote replaces the small file name in the VM's directory atomically, for facts kept
// beside state.json (such as the VM's last snapshot). name follows CreateFile's rules. Like
// CreateFile it takes root.lock, waiting while ctx allows, and fails with an error wrapping
// ErrNotFound when the directory is gone or belongs to a newer VM of the same name, or
// ErrExited once the VM is kept as exited.
func (d *Dir) WriteNote(ctx context.Context, name string, data []byte) error {
	if err := d.checkOwnName("write", name); err != nil {
		return err
	}
	rl, err := d.lockLive(ctx)
	if err != nil {
		return fmt.Errorf("write %s of vm %s: %w", name, d.name, err)
	}
	defer rl.Unlock()
	if err := d.root.vms.WriteFileAtomic(d.name+"/"+name, data, 0o600); err != nil {
		return fmt.Errorf("write %s of vm %s: %w", name, d.name, err)
	}
	return nil
}

// ReadNote reads the file WriteNote wrote, at most limit bytes; an error wraps
// fs.ErrNotExist when there is none.
func (d *Dir) ReadNote(name string, limit int64) ([]byte, error) {
	return d.root.vms.ReadFile(d.name+"/"+name, limit)
}
