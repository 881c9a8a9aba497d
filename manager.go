package smartvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/rundir"
)

// cleanupTimeout bounds the cleanup that runs after a failure or an exit, detached from any
// caller's ctx.
const cleanupTimeout = 30 * time.Second

// Manager starts and adopts VMs in one runtime root. It is safe for concurrent use, and
// Managers in several processes may share a root.
type Manager struct {
	root   *rundir.Root
	log    *slog.Logger
	bin    string
	images *baseimage.Manager
	grace  time.Duration
	// stopNotify, when set, hears of Stop's escalations (WithStopNotify).
	stopNotify func(StopEscalation)
	// serialMax bounds serial.log (WithSerialLogLimit); < 0: no limit.
	serialMax int64
	// stagingDir is where staged drives go (WithStagingDir); "": the VMs' directories.
	stagingDir string
	// netnsDir is where per-VM network namespaces are mounted; empty: netdev's default.
	netnsDir string
	// agent is the smartvm-agent binary MachineSpec.Agent installs; empty: none.
	agent string
	jail  jailOptions
	pages pageServers // MemoryUffd page servers (memory.go)
	warm  warmPool    // WarmJails

	mu       sync.Mutex
	machines map[string]*Machine // the VMs this manager started or attached, by name
	closed   bool

	verMu    sync.Mutex
	versions map[binaryKey]fcapi.Version
}

// NewManager opens (creating it if needed) the runtime root and reaps the directories of VMs
// whose process is gone, with their staged drives and sockets. A VM that cannot be reaped now
// is left for the next reap.
func NewManager(opts ...Option) (*Manager, error) {
	o := options{
		binary: DefaultFirecrackerBinary,
		logger: slog.New(slog.DiscardHandler),
		grace:  DefaultStopGracePeriod,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.runtimeDir == "" {
		o.runtimeDir = rundir.DefaultPath()
	}
	if o.binary == "" {
		o.binary = DefaultFirecrackerBinary
	}
	if o.serialMax == 0 {
		o.serialMax = DefaultSerialLogLimit
	}
	if o.stagingDir != "" {
		abs, err := filepath.Abs(o.stagingDir)
		if err != nil {
			return nil, fmt.Errorf("new manager: staging dir: %w", err)
		}
		o.stagingDir = abs
	}
	mgr := &Manager{
		log:        o.logger,
		bin:        o.binary,
		images:     o.images,
		grace:      o.grace,
		stopNotify: o.stopNotify,
		serialMax:  o.serialMax,
		stagingDir: o.stagingDir,
		netnsDir:   o.netnsDir,
		agent:      o.agent,
		jail:       o.jail,
		machines:   map[string]*Machine{},
		versions:   map[binaryKey]fcapi.Version{},
	}
	root, err := rundir.Open(o.runtimeDir, mgr.reapHook, o.logger)
	if err != nil {
		return nil, fmt.Errorf("new manager: %w", err)
	}
	mgr.root = root
	root.SetSerialLimit(mgr.serialMax)
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := mgr.Reap(ctx); err != nil {
		// A VM that cannot be reaped now does not make the root unusable; the next reap
		// retries it.
		mgr.log.Warn("reap runtime root", "root", root.Path(), "err", err)
	}
	return mgr, nil
}

// RuntimeDir returns the runtime root's absolute path.
func (mgr *Manager) RuntimeDir() string { return mgr.root.Path() }

// Reap removes the directories of VMs whose process is gone (staged drives, sockets, networks
// and base-image in-use markers included) and returns their names; then it removes the
// networks, and releases the address leases and jail uids, of VMs that died before they
// recorded them.
// Live VMs, and VMs whose owner still holds them, are left alone; a VM whose process is gone
// while its owner still holds it gets up to 200 ms for the owner to let go. Networks are
// removed relative to the calling thread's network namespace, as netdev.Reclaim does.
func (mgr *Manager) Reap(ctx context.Context) ([]string, error) {
	names, err := mgr.root.Reap(ctx)
	if len(names) > 0 {
		mgr.log.Info("reaped dead vms", "names", names)
	}
	return names, errors.Join(err, mgr.reclaimNetworks(ctx), mgr.reclaimJailIDs(ctx))
}

// reapHook releases what a dead VM held outside its directory: its network (torn down in the
// calling thread's network namespace), its vsock socket and vsock listeners' sockets when the
// spec put them elsewhere, and its base image.
func (mgr *Manager) reapHook(ctx context.Context, name string, st *rundir.State) error {
	if st == nil {
		return nil
	}
	var errs []error
	if len(st.Network) > 0 {
		errs = append(errs, mgr.teardownRecorded(ctx, name, st.Network))
	}
	if st.StagingDir != "" {
		// Staged in a staging root (WithStagingDir), outside the VM's directory.
		errs = append(errs, mgr.removeStaging(st.StagingDir, name))
	}
	rec, _ := recordOf(st) // a spec that does not parse has no vsock path to remove
	if v := rec.spec.Vsock; v != nil && v.Path != "" {
		// Firecracker never removes the vsock's socket, and one outside the VM's directory
		// would make the next VM that names the path fail to start. The same goes for the
		// sockets of vsock listeners (<path>_<port>) whose process died without closing them.
		errs = append(errs, removeStaleSocket(v.Path), removeStaleVsockSockets(v.Path))
	}
	errs = append(errs, mgr.reapJail(ctx, name, st))
	if st.BaseImage != nil {
		if mgr.images == nil {
			// Without a base-image manager this process cannot release the marker; the cache
			// keeps the bundle until a manager that has one reaps it.
			errs = append(errs, fmt.Errorf("release base image %s of vm %s: no base-image manager (use WithBaseImages)", st.BaseImage.ID, name))
		} else {
			errs = append(errs, releaseBaseImage(ctx, mgr.images, st.BaseImage.ID, st.BaseImage.Holder))
		}
	}
	return errors.Join(errs...)
}

// Close stops every VM this manager owns (Ctrl-Alt-Del, then SIGTERM, then SIGKILL, as
// Machine.Stop, within the stop grace period plus a few seconds) and removes what they left.
// It releases the VMs it started Detached and those it attached: they keep running, for
// another process to adopt. Afterwards Start and Attach return ErrClosed. Close is safe to
// call more than once.
func (mgr *Manager) Close() error {
	mgr.mu.Lock()
	mgr.closed = true
	ms := make([]*Machine, 0, len(mgr.machines))
	for _, m := range mgr.machines {
		ms = append(ms, m)
	}
	mgr.mu.Unlock()

	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			if !m.started || m.record().st.Mode == ModeDetached {
				errs[i] = m.Release()
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), mgr.grace+5*time.Second)
			defer cancel()
			errs[i] = errors.Join(m.Stop(ctx), m.Close())
		})
	}
	wg.Wait()
	mgr.closeWarm()
	errs = append(errs, mgr.root.Close())
	return errors.Join(errs...)
}

// killAll sends SIGKILL to every VM this manager owns.
func (mgr *Manager) killAll() {
	mgr.mu.Lock()
	defer mgr.mu.Unlock()
	for _, m := range mgr.machines {
		if m.started && m.record().st.Mode == ModeOwned {
			m.signalKill()
		}
	}
}

// register records m, a Machine this manager started or attached, and returns it; for an
// attached m, a Machine already recorded under its name (a concurrent Attach got there
// first) is returned instead.
func (mgr *Manager) register(m *Machine) (*Machine, error) {
	mgr.mu.Lock()
	defer mgr.mu.Unlock()
	if mgr.closed {
		return nil, ErrClosed
	}
	if have := mgr.machines[m.name]; have != nil && !m.started {
		return have, nil
	}
	mgr.machines[m.name] = m
	return m, nil
}

func (mgr *Manager) forget(m *Machine) {
	mgr.mu.Lock()
	defer mgr.mu.Unlock()
	if mgr.machines[m.name] == m {
		delete(mgr.machines, m.name)
	}
}

// warmName returns an error wrapping ErrNotFound when name is a warm jail's (WarmJails): such
// a jail is its manager's, and no VM until a start takes it, so nothing else may attach to,
// stop or remove it by that name.
func warmName(name string) error {
	if jailer.IsWarmID(name) {
		return fmt.Errorf("vm %s: the name is a warm jail's, not a vm's: %w", name, ErrNotFound)
	}
	return nil
}

func (mgr *Manager) lookup(name string) (*Machine, error) {
	mgr.mu.Lock()
	defer mgr.mu.Unlock()
	if mgr.closed {
		return nil, ErrClosed
	}
	return mgr.machines[name], nil
}

// Attach adopts a VM that another process (or an earlier Manager) started in this runtime
// root, from its state.json: its process must run with the recorded start time, and its API
// must answer GET /. The returned Machine can pause, resume, stop, kill and wait for the VM,
// and removes its directory once it ends. Its Close kills the VM; Release stops watching it
// and leaves it running. Wait cannot learn an attached VM's exit code: it returns nil once
// the VM has ended. A VM this manager already runs or has attached is returned as is, also
// to concurrent calls.
//
// Attach returns an error wrapping ErrNotFound when no live VM has the name (a dead one is
// reaped; a warm jail's name, see WarmJails, is no VM's), ErrExited (and ErrNotRunning) when
// the VM is kept as exited (Info describes it), and ErrClosed after Close.
func (mgr *Manager) Attach(ctx context.Context, name string) (*Machine, error) {
	if err := warmName(name); err != nil {
		return nil, fmt.Errorf("attach %w", err)
	}
	if m, err := mgr.lookup(name); err != nil || m != nil {
		return m, err
	}
	dir, st, err := mgr.root.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: %w", name, err)
	}
	if st.Exit != nil {
		return nil, exitedError(name, st.Exit)
	}
	m, err := attachMachine(ctx, mgr, dir, st)
	if errors.Is(err, ErrNotFound) {
		// Dead, and reaped: a kept VM is now an exit record.
		if _, st, lerr := mgr.root.Lookup(name); lerr == nil && st.Exit != nil {
			return nil, exitedError(name, st.Exit)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: %w", name, err)
	}
	got, err := mgr.register(m)
	if got != m {
		m.Release()
	}
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: %w", name, err)
	}
	if got == m {
		go m.supervise()
	}
	return got, nil
}

// ForceRemove removes VM name without trusting its state.json, for a VM whose state is
// corrupt (ErrCorruptState) or names a process that is not its firecracker: it kills (SIGKILL)
// the processes of this user that serve the VM's API socket, and a jailed firecracker proven
// to be the VM's (the uid leased to its name, --id with its name, its root the jail's chroot)
// with its jail's guard; it releases what it can (a jail found so: its chroot, cgroups and
// uid lease), and removes the VM's directory. The directory must be one smartvm made (its proof: owner, mode, id and
// lock files, no symlinks), and no process may own the VM. It returns the pids it killed, and
// an error wrapping ErrNotFound when there is no such VM (a warm jail is none). A network the
// corrupt state recorded is not torn down by name; Reap removes networks whose VM has no
// directory.
func (mgr *Manager) ForceRemove(ctx context.Context, name string) ([]int, error) {
	if err := warmName(name); err != nil {
		return nil, fmt.Errorf("remove %w", err)
	}
	if m, err := mgr.lookup(name); err != nil {
		return nil, err
	} else if m != nil {
		return nil, fmt.Errorf("remove vm %s: this manager runs it: use Kill and Close: %w", name, ErrExists)
	}
	// A jailed firecracker serves a socket in its chroot: it is found by its jail instead.
	jails, killed, jerr := mgr.killJailed(ctx, name)
	more, err := mgr.root.ForceRemove(ctx, name)
	if errors.Is(err, ErrNotFound) && len(killed) > 0 {
		// The jailed VM's owner (a supervisor) saw it die and removed its directory first.
		err = nil
	}
	killed = append(killed, more...)
	if len(killed) > 0 {
		mgr.log.Info("killed the processes of a vm removed by force", "vm", name, "pids", killed)
	}
	// The jails found are removed even when the directory was gone: their processes are.
	jerr = errors.Join(jerr, jails.remove(ctx, mgr))
	if err != nil {
		return killed, errors.Join(err, jerr)
	}
	return killed, errors.Join(jerr, mgr.reclaimNetworks(ctx))
}

// List reaps dead VMs, then describes every live VM in the runtime root, sorted by name, with
// its state as Firecracker reports it (StateUnknown when its API does not answer in time),
// and every VM kept as exited (KeepExited), with StateExited and Exit. VMs still starting, and
// warm jails (WarmJails), are left out.
func (mgr *Manager) List(ctx context.Context) ([]MachineInfo, error) {
	if _, err := mgr.Reap(ctx); err != nil {
		mgr.log.Warn("reap runtime root", "root", mgr.root.Path(), "err", err)
	}
	states, ended, corrupt, err := mgr.root.Records()
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	infos := make([]MachineInfo, 0, len(states)+len(ended)+len(corrupt))
	for _, st := range states {
		if !jailer.IsWarmID(st.Name) { // a warm jail is no VM yet (WarmJails)
			infos = append(infos, mgr.liveInfo(ctx, st))
		}
	}
	for _, st := range ended {
		infos = append(infos, mgr.recordedInfo(st))
	}
	for _, name := range corrupt {
		p := mgr.root.Paths(name)
		infos = append(infos, MachineInfo{Name: name, State: StateUnknown, RuntimeDir: p.Dir, APISocket: p.APISocket,
			ConsolePath: p.Serial, LogPath: p.Log, Note: NoteCorruptState})
	}
	slices.SortFunc(infos, func(a, b MachineInfo) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

// queryState asks GET / with a short timeout.
func queryState(ctx context.Context, c *fcapi.Client) MachineState {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ii, err := c.GetInstanceInfo(ctx)
	if err != nil {
		return StateUnknown
	}
	return stateOf(ii.State)
}

// liveInfo describes the live VM st records, with its state as its firecracker reports it
// (StateUnknown when its API does not answer in time).
func (mgr *Manager) liveInfo(ctx context.Context, st *rundir.State) MachineInfo {
	info := mgr.recordedInfo(st)
	c := fcapi.New(st.Paths.APISocket, fcapi.WithLogger(mgr.log), fcapi.WithMaxPayload(info.Spec.apiPayloadLimit()))
	info.State = queryState(ctx, c)
	c.Close()
	if info.State == StatePaused && mgr.root.SnapshotMarked(st.Name) {
		info.Note = NotePausedBySnapshot
	}
	return info
}

// recordedInfo describes the VM st records, as a Machine of it would (describe).
func (mgr *Manager) recordedInfo(st *rundir.State) MachineInfo {
	rec, _ := recordOf(st) // a spec that does not parse leaves Spec empty
	return mgr.describe(rec, mgr.statePaths(st))
}

// recordedSSHKey returns the SSH key path state.json records for a VM's base image when it is
// the one the cache keeps for that image, and "" otherwise: a recorded path is data, never a
// file to hand to ssh on its word.
func (mgr *Manager) recordedSSHKey(b *rundir.BaseImage) string {
	if mgr.images == nil || b.SSHKey == "" || b.SSHKey != mgr.images.SSHKeyPath(b.ID) {
		return ""
	}
	return b.SSHKey
}

// Firecracker resolves the manager's firecracker binary to an absolute path and returns its
// version. The version is probed (FirecrackerVersion) once per binary identity (path, device,
// inode, size, modification and change times) and cached, in memory and, for later
// processes, in a private file per binary under the runtime root.
func (mgr *Manager) Firecracker(ctx context.Context) (path string, version fcapi.Version, err error) {
	key, v, err := mgr.firecracker(ctx)
	return key.Path, v, err
}

// firecracker is Firecracker with the binary's identity as probed (its Path is the absolute
// path), which a warm jail compares with the one it was made with.
func (mgr *Manager) firecracker(ctx context.Context) (binaryKey, fcapi.Version, error) {
	bin := mgr.bin
	if !strings.ContainsRune(bin, '/') {
		p, err := exec.LookPath(bin)
		if err != nil {
			return binaryKey{}, fcapi.Version{}, fmt.Errorf("firecracker binary %q not found in PATH: install Firecracker or name it with WithFirecrackerBinary: %w", bin, err)
		}
		bin = p
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return binaryKey{}, fcapi.Version{}, fmt.Errorf("firecracker binary %s: %w", bin, err)
	}
	key, fi, err := probeKey(abs)
	if err != nil {
		return binaryKey{}, fcapi.Version{}, fmt.Errorf("firecracker binary: %w", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return binaryKey{}, fcapi.Version{}, fmt.Errorf("firecracker binary %s is not an executable file", abs)
	}
	v, err := mgr.probedVersion(ctx, key, FirecrackerVersion)
	if err != nil {
		return binaryKey{}, fcapi.Version{}, err
	}
	return key, v, nil
}

// FirecrackerVersion runs `bin --version` and parses the first line it prints, such as
// "Firecracker v1.14.2". It takes at most 10 seconds (less if ctx says so).
func FirecrackerVersion(ctx context.Context, bin string) (fcapi.Version, error) {
	ctx, cancel := context.WithTimeout(ctx, versionProbeTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second // a child it left holding the output does not hold up Run
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fcapi.Version{}, fmt.Errorf("run %s --version: %w: %s", bin, err, strings.TrimSpace(errb.String()))
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	v, err := fcapi.ParseVersion(strings.TrimSpace(line))
	if err != nil {
		return fcapi.Version{}, fmt.Errorf("%s --version printed %q: %w", bin, line, err)
	}
	return v, nil
}
