package rundir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/smartvm/smartvm/internal/proc"
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
)

// StateVersion is the state.json format this package writes and the newest it reads.
const StateVersion = 1

var (
	// ErrExists reports that a VM directory with the name already belongs to a live VM, or to
	// one being created.
	ErrExists = errors.New("vm already exists")
	// ErrNotFound reports that no VM directory has the name.
	ErrNotFound = errors.New("vm not found")
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
	OwnerPID           int       `json:"owner_pid"`
	Created            time.Time `json:"created"`
	FirecrackerBinary  string    `json:"firecracker_binary"`
	FirecrackerVersion string    `json:"firecracker_version,omitempty"`
	Paths              Paths     `json:"paths"`
	// BaseImage records the base-image bundle the VM holds in use, if any.
	BaseImage *BaseImage `json:"base_image,omitempty"`
	// Spec is the VM's description as its owner serialised it.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Network is the host network set up for the VM (a netdev.Network as its owner
	// serialised it), if any: reaping tears it down.
	Network json.RawMessage `json:"network,omitempty"`
}

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
		return nil, fmt.Errorf("parse state: %w", err)
	}
	switch {
	case st.Version < 1:
		return nil, fmt.Errorf("parse state: missing or invalid version %d", st.Version)
	case st.Version > StateVersion:
		return nil, fmt.Errorf("parse state: version %d is newer than this smartvm understands (%d); use a newer smartvm", st.Version, StateVersion)
	case checkName(st.Name) != nil:
		return nil, fmt.Errorf("parse state: %w", checkName(st.Name))
	case st.PID < 0:
		return nil, fmt.Errorf("parse state: negative pid %d", st.PID)
	}
	return &st, nil
}

// Alive reports whether the state's process runs with the recorded start time.
func (st *State) Alive() bool {
	if st.PID <= 0 {
		return false
	}
	alive, err := proc.Alive(st.PID, st.StartTime)
	return err == nil && alive
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
// sharing the directory.
type Root struct {
	path   string
	onReap ReapFunc
}

// Open creates (if needed) and opens the runtime root at path. onReap, which may be nil, is
// called for every VM directory reaped through this Root.
func Open(path string, onReap ReapFunc) (*Root, error) {
	if path == "" {
		return nil, errors.New("open runtime root: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open runtime root %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, "vms"), 0o700); err != nil {
		return nil, fmt.Errorf("open runtime root %s: %w", abs, err)
	}
	return &Root{path: abs, onReap: onReap}, nil
}

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

// lock takes root.lock, waiting while ctx allows.
func (r *Root) lock(ctx context.Context) (*flock.Flock, error) {
	l := flock.New(filepath.Join(r.path, "root.lock"))
	ok, err := l.TryLockContext(ctx, lockRetry)
	if err != nil {
		return nil, fmt.Errorf("lock runtime root %s: %w", r.path, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock runtime root %s: %w", r.path, ctx.Err())
	}
	return l, nil
}

// checkName refuses names that are not a single path element.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("invalid vm name %q", name)
	}
	return nil
}

// Dir is one VM's directory, as created (and owned) or looked up.
type Dir struct {
	Paths
	root *Root
	name string
	id   string       // the content of IDFile
	lock *flock.Flock // held by the owner; nil for a looked-up directory
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
	err := r.retryHeld(ctx, func(last bool) (bool, error) {
		p := r.Paths(name)
		if _, err := os.Lstat(p.Dir); err == nil {
			switch res, err := r.reapLocked(ctx, name); {
			case err != nil:
				return false, err
			case res == held && !last:
				return true, nil
			case res != reaped && res != gone:
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

// create makes and locks the directory of VM name, which does not exist. The caller holds
// root.lock.
func (r *Root) create(name string) (*Dir, error) {
	p := r.Paths(name)
	if err := os.Mkdir(p.Dir, 0o700); err != nil {
		return nil, err
	}
	d := &Dir{Paths: p, root: r, name: name}
	fail := func(err error) (*Dir, error) {
		os.RemoveAll(p.Dir)
		return nil, err
	}
	var b [16]byte
	rand.Read(b[:])
	d.id = hex.EncodeToString(b[:])
	if err := os.WriteFile(filepath.Join(p.Dir, IDFile), []byte(d.id), 0o600); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(p.Drives, 0o700); err != nil {
		return fail(err)
	}
	l := flock.New(p.Lock)
	ok, err := l.TryLock()
	if err != nil {
		return fail(err)
	}
	if !ok {
		return fail(errors.New("lock held by another process"))
	}
	d.lock = l
	return d, nil
}

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

// retryHeld runs fn with root.lock held, and again after a pause of heldPoll (with root.lock
// released) while fn asks to retry, for up to heldWait or until ctx ends. last tells fn that
// this is its last run: it must then decide.
func (r *Root) retryHeld(ctx context.Context, fn func(last bool) (retry bool, err error)) error {
	deadline := time.Now().Add(heldWait)
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
// wrapping ErrNotFound when there is no such directory or it holds no state yet.
func (r *Root) Lookup(name string) (*Dir, *State, error) {
	if err := checkName(name); err != nil {
		return nil, nil, fmt.Errorf("look up vm: %w: %w", err, ErrNotFound)
	}
	p := r.Paths(name)
	id, err := os.ReadFile(filepath.Join(p.Dir, IDFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("look up vm %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up vm %s: %w", name, err)
	}
	st, err := readState(p.State)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("look up vm %s: no state yet: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up vm %s: %w", name, err)
	}
	return &Dir{Paths: p, root: r, name: name, id: string(id)}, st, nil
}

func readState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseState(b)
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
	if err := WriteFileAtomic(d.State, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state of vm %s: %w", d.name, err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that readers see the old or the new content,
// never a part: a temporary file in the same directory, fsync, rename, directory fsync.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		return err
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
	// Every directory gets its id file while root.lock is held, so under the lock a missing
	// id file means a removal that was interrupted: what is left is garbage either way.
	id, err := os.ReadFile(filepath.Join(d.Dir, IDFile))
	if (err == nil && string(id) == d.id) || errors.Is(err, fs.ErrNotExist) {
		if err := os.RemoveAll(d.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove vm dir %s: %w", d.name, err))
		}
	} else if err != nil {
		errs = append(errs, fmt.Errorf("remove vm dir %s: %w", d.name, err))
	}
	errs = append(errs, d.Unlock())
	return errors.Join(errs...)
}

// reservedNames are the entries of a VM directory that this package and its users manage.
var reservedNames = []string{LockFile, StateFile, SocketFile, LogFile, MetricsFile, SerialFile,
	SerialInFile, StderrFile, ConfigFile, MetadataFile, VsockFile, DrivesDir, IDFile}

// CreateFile creates a new file called name (mode 0600, opened for appending) in this
// incarnation of the VM's directory, so that it is removed with the directory. It takes
// root.lock, so the directory cannot be removed halfway through, and fails with an error
// wrapping ErrNotFound when the directory is gone or belongs to a newer VM of the same name.
// name must be a plain file name that is none of the directory's own entries.
func (d *Dir) CreateFile(ctx context.Context, name string) (*os.File, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." || slices.Contains(reservedNames, name) {
		return nil, fmt.Errorf("create %q in vm dir %s: want a plain file name other than the directory's own entries", name, d.name)
	}
	rl, err := d.root.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("create %s in vm dir %s: %w", name, d.name, err)
	}
	defer rl.Unlock()
	if id, err := os.ReadFile(filepath.Join(d.Dir, IDFile)); err != nil || string(id) != d.id {
		return nil, fmt.Errorf("create %s in vm dir %s: the vm has ended and its directory is gone: %w", name, d.name, ErrNotFound)
	}
	f, err := os.OpenFile(filepath.Join(d.Dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s in vm dir %s: %w", name, d.name, err)
	}
	return f, nil
}

// Names returns the names of all VM directories, sorted.
func (r *Root) Names() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.path, "vms"))
	if err != nil {
		return nil, fmt.Errorf("list vms in %s: %w", r.path, err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && checkName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Reap removes the directory of every VM whose process is gone and whose lock nobody
// holds, calling the root's ReapFunc for each first. It returns the names it removed. A VM
// whose process is gone while its lock is still held gets up to 200 ms to have the lock
// released (its owner is cleaning up, or dying), and so does one whose process is still
// winding down after its main thread ended (proc.Exiting). A VM that cannot be reaped now is left for
// the next call, and its error is joined into the result.
func (r *Root) Reap(ctx context.Context) ([]string, error) {
	var names, reapedNames []string
	var errs []error
	first := true
	err := r.retryHeld(ctx, func(last bool) (bool, error) {
		if first {
			first = false
			var err error
			if names, err = r.Names(); err != nil {
				return false, err
			}
		}
		var again []string
		for _, name := range names {
			res, err := r.reapLocked(ctx, name)
			switch {
			case err != nil:
				errs = append(errs, err)
			case res == reaped:
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

// reapResult is what reapLocked found and did.
type reapResult int

const (
	kept   reapResult = iota // left alone: the VM is alive, or being created
	reaped                   // removed
	gone                     // there was no directory
	held                     // left alone for now: its process is gone but its lock is held, or it is still exiting
)

// reapLocked removes VM name's directory if nobody holds its lock and its process is gone.
// The caller holds root.lock.
func (r *Root) reapLocked(ctx context.Context, name string) (reapResult, error) {
	p := r.Paths(name)
	l := flock.New(p.Lock)
	// TryLock creates the lock file if a removal that was cut short took it: only a missing
	// directory makes it fail with ErrNotExist.
	ok, err := l.TryLock()
	if errors.Is(err, fs.ErrNotExist) {
		return gone, nil
	}
	if err != nil {
		return kept, fmt.Errorf("reap vm %s: %w", name, err)
	}
	if !ok {
		// Its owner holds it. A recorded process that is gone means the owner is cleaning
		// up, or is dying itself.
		if st, err := readState(p.State); err == nil && st.PID > 0 && !st.Alive() {
			return held, nil
		}
		return kept, nil
	}
	defer l.Unlock()
	st, err := readState(p.State)
	switch {
	case err != nil:
		// No readable state: the owner died before the VM ran (the lock is free), so nothing
		// outside the directory was recorded as held.
		st = nil
	case st.Alive():
		return kept, nil // a detached VM whose starter has exited
	case st.exiting():
		return held, nil // killed a moment ago: its threads still hold its TAPs and sockets
	}
	if r.onReap != nil {
		if err := r.onReap(ctx, name, st); err != nil {
			return kept, fmt.Errorf("reap vm %s: %w", name, err)
		}
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		return kept, fmt.Errorf("reap vm %s: %w", name, err)
	}
	return reaped, nil
}

// States returns the state of every VM whose process is alive, sorted by name. VMs still
// starting (no pid yet) and dead ones are left out.
func (r *Root) States() ([]*State, error) {
	names, err := r.Names()
	if err != nil {
		return nil, err
	}
	var out []*State
	for _, name := range names {
		st, err := readState(r.Paths(name).State)
		if err != nil || !st.Alive() {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// ID returns the random token that names this incarnation of the directory.
func (d *Dir) ID() string { return d.id }

// Reap removes the directory as Root.Reap would: only when nobody holds the VM's lock and its
// process is gone (waiting up to 200 ms for the lock of a VM whose process is gone). It
// reports whether the directory is gone afterwards: reaped now, removed earlier, or replaced by
// a newer VM of the same name (which Reap leaves alone).
func (d *Dir) Reap(ctx context.Context) (bool, error) {
	isGone := false
	err := d.root.retryHeld(ctx, func(last bool) (bool, error) {
		id, err := os.ReadFile(filepath.Join(d.Dir, IDFile))
		if errors.Is(err, fs.ErrNotExist) || (err == nil && string(id) != d.id) {
			isGone = true
			return false, nil
		}
		if err != nil {
			return false, err
		}
		res, err := d.root.reapLocked(ctx, d.name)
		isGone = res == reaped || res == gone
		return res == held, err
	})
	if err != nil {
		return false, fmt.Errorf("reap vm %s: %w", d.name, err)
	}
	return isGone, nil
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

// Has reports whether a directory for VM name exists: the VM runs, is being created or
// cleaned up, or has died and is not reaped yet.
func (r *Root) Has(name string) bool {
	if checkName(name) != nil {
		return false
	}
	_, err := os.Lstat(r.Paths(name).Dir)
	return err == nil
}
