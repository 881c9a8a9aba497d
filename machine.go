package smartvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/logcap"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/netdev"
)

// MachineState is a VM's state as its Firecracker reports it, combined with whether its
// process still runs.
type MachineState string

// Machine states.
const (
	StateNotStarted MachineState = "NotStarted" // the process runs but the guest was not booted
	StateRunning    MachineState = "Running"
	StatePaused     MachineState = "Paused"
	StateExited     MachineState = "Exited"  // the process has ended
	StateUnknown    MachineState = "Unknown" // the process runs but its API did not answer
)

func stateOf(s fcapi.InstanceState) MachineState {
	switch s {
	case fcapi.StateRunning:
		return StateRunning
	case fcapi.StatePaused:
		return StatePaused
	case fcapi.StateNotStarted:
		return StateNotStarted
	}
	return StateUnknown
}

// Ownership modes, as MachineInfo.Mode reports them.
const (
	ModeOwned    = "owned"
	ModeDetached = "detached"
)

// MachineInfo describes a VM: what state.json records, plus its state.
type MachineInfo struct {
	Name string `json:"name"`
	// State is the VM's state: from Firecracker for Manager.List; as last seen by this
	// process for Machine.Info (Machine.State asks Firecracker).
	State              MachineState `json:"state"`
	PID                int          `json:"pid"`
	APISocket          string       `json:"api_socket"`
	RuntimeDir         string       `json:"runtime_dir"`
	ConsolePath        string       `json:"console_path"`
	LogPath            string       `json:"log_path"`
	MetricsPath        string       `json:"metrics_path,omitempty"`
	FirecrackerBinary  string       `json:"firecracker_binary"`
	FirecrackerVersion string       `json:"firecracker_version"`
	// Mode is ModeOwned or ModeDetached.
	Mode    string    `json:"mode"`
	Created time.Time `json:"created"`
	// BaseImage is the ID of the base-image bundle the VM boots, if any.
	BaseImage string `json:"base_image,omitempty"`
	// SSHKey is the base-image bundle's SSH private key (root's key in the guest), when the
	// VM boots a base image that has one.
	SSHKey string `json:"ssh_key,omitempty"`
	// GuestIP is the address at which the host reaches the guest (Network.GuestAddr); empty
	// without a network.
	GuestIP string `json:"guest_ip,omitempty"`
	// Network is the host network smartvm set up for the VM (MachineSpec.Network); nil
	// without one.
	Network *netdev.Network `json:"network,omitempty"`
	// VsockSocket is the host-side Unix socket of the VM's vsock device (see
	// Machine.DialVsock); empty without one.
	VsockSocket string `json:"vsock_socket,omitempty"`
	// StagingDir is where the VM's ephemeral drives are staged: drives/ in RuntimeDir, or a
	// directory under WithStagingDir's.
	StagingDir string `json:"staging_dir"`
	// StagedBytes is the space the staged drives take now (allocated blocks: a reflinked or
	// sparse copy counts only what differs or holds data).
	StagedBytes int64 `json:"staged_bytes"`
	// Spec is the VM's description, with defaults applied.
	Spec MachineSpec `json:"spec"`
	// RestoredFrom is the snapshot directory the VM was started from, if any.
	RestoredFrom string `json:"restored_from,omitempty"`
	// SnapshotTaken is when that snapshot was taken: the guest's wall clock woke at this
	// time and runs behind by the time since, until something in the guest (a guest agent,
	// NTP) sets it. Zero for a booted VM.
	SnapshotTaken time.Time `json:"snapshot_taken,omitzero"`
	// Note tells something about the VM its state alone does not: NotePausedBySnapshot or
	// NoteCorruptState. Empty: nothing.
	Note string `json:"note,omitempty"`
	// Exit says how the VM ended, for a VM kept as exited (KeepExited; State is then
	// StateExited); nil otherwise.
	Exit *ExitInfo `json:"exit,omitempty"`
}

// ExitInfo is how a VM kept as exited ended.
type ExitInfo struct {
	// Code is firecracker's exit code: 0 when the guest reset or shut down; -1 when a signal
	// killed firecracker or nobody saw it end.
	Code int `json:"exit_code"`
	// Signal names the signal that killed firecracker, such as "SIGKILL"; empty otherwise.
	Signal string `json:"signal,omitempty"`
	// Reason says in words how the VM ended: "guest reset or shut down (exit code 0)",
	// "stopped: firecracker killed by signal SIGTERM", "owner died: ...".
	Reason string `json:"reason"`
	// EndedAt is when the VM's end was noticed.
	EndedAt time.Time `json:"ended_at"`
	// LogTail holds the last lines of firecracker's log and stderr when it failed.
	LogTail string `json:"log_tail,omitempty"`
	// MainExitCode is the exit code of the main process of a VM whose init is the agent
	// (MachineSpec.AgentMain), as the agent reported it while its owner watched
	// (Machine.WatchAgent); nil when none was reported.
	MainExitCode *int `json:"main_exit_code,omitempty"`
}

// Notes of MachineInfo.
const (
	// NotePausedBySnapshot: the VM is paused because a snapshot of it was interrupted (its
	// process killed); Machine.Resume lets it run again.
	NotePausedBySnapshot = "paused by an interrupted snapshot"
	// NoteCorruptState: the VM's state.json cannot be read, so nothing it records is used;
	// Manager.Remove with force removes the VM.
	NoteCorruptState = "state.json is corrupt: nothing it records is trusted; remove the vm with rm -f"
)

// setNetwork fills Network and GuestIP.
func (i *MachineInfo) setNetwork(n *netdev.Network) {
	if n == nil {
		return
	}
	i.Network = n
	if a := n.GuestAddr(); a.IsValid() {
		i.GuestIP = a.String()
	}
}

// Uptime returns how long the VM has existed, at now.
func (i MachineInfo) Uptime(now time.Time) time.Duration { return now.Sub(i.Created) }

// Machine is a running (or ended) microVM, started by Manager.Start or adopted by
// Manager.Attach. Its methods are safe for concurrent use.
//
// A Machine started by this process removes everything the VM left on the host as soon as
// its process ends, for whatever reason; Close does that too and also kills the VM if it
// still runs. Until one of them happens, a VM that is not stopped keeps running.
type Machine struct {
	mgr *Manager
	log *slog.Logger
	// name is the record's name, which never changes: the manager's key for the Machine.
	name string
	// rec is the VM's record (record.go); only update changes it (its spec's limiters).
	rec      vmRecord
	recMu    sync.Mutex
	paths    rundir.Paths // where its files are
	dir      *rundir.Dir
	proc     *proc.Process
	client   *fcapi.Client
	netns    *os.File // the namespace its network was built in (started here, with a network)
	started  bool     // started by this process (else attached)
	serial   *os.File // read handle on serial.log, so the console outlives the files
	cleanups []func(context.Context) error

	// removeDir (nil for an attached VM) removes the VM's directory after the cleanups (run in
	// reverse once the VM ends),
	// unless the record asks for itself to be kept (KeepExited).
	removeDir func(context.Context) error
	stopping  atomic.Bool  // Stop, Kill or Close ended the VM
	mainExit  atomic.Int32 // 1 + the main process's exit code the agent reported (WatchAgent); 0: none

	stateMu sync.Mutex
	state   MachineState // last seen

	endMu      sync.Mutex
	endClaimed bool          // supervise or Release has claimed the handles (claimEnd)
	released   chan struct{} // closed by Release: stop supervising
	done       chan struct{} // closed once the process ended and the cleanup ran
	result     error         // Wait's result, set before done is closed
	cleanupErr error         // set before done is closed

	closeOnce sync.Once
	closeErr  error

	vsockMu        sync.Mutex
	vsockListeners map[uint32]*vsockListener // ListenVsock's open listeners, by port
	vsockEnded     bool                      // the VM has ended: no more listeners
}

// Name returns the VM's name.
func (m *Machine) Name() string { return m.name }

// PID returns the firecracker process id.
func (m *Machine) PID() int { return m.proc.PID() }

// Dir returns the VM's runtime directory (removed when the VM ends).
func (m *Machine) Dir() string { return m.paths.Dir }

// CreateFile creates a new file of the caller's, called name, in the VM's runtime directory
// (mode 0600, opened for appending), so that it is removed with the VM's other files: a
// supervisor's log, say. name must be a plain file name that is none of the directory's own
// entries (state.json, api.sock, serial.log, ...). It fails with an error wrapping ErrNotFound
// once the VM has ended and its directory is gone, and ErrExited once it is kept as exited.
func (m *Machine) CreateFile(ctx context.Context, name string) (*os.File, error) {
	f, err := m.dir.CreateFile(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", m.name, err)
	}
	return f, nil
}

// APISocket returns the path of Firecracker's API socket.
func (m *Machine) APISocket() string { return m.paths.APISocket }

// Spec returns the VM's description, with defaults applied and its name set.
func (m *Machine) Spec() MachineSpec { return m.record().spec }

// record returns a copy of the VM's record.
func (m *Machine) record() vmRecord {
	m.recMu.Lock()
	defer m.recMu.Unlock()
	return m.rec
}

// update changes the VM's record with fn: the one this Machine holds, and the one state.json
// holds (under the runtime root's lock, as every writer of a running VM's state takes it),
// which Attach, List, Info and Snapshot in other processes read. It changes this Machine's
// record even when state.json cannot be: the error says so.
func (m *Machine) update(ctx context.Context, fn func(*vmRecord)) error {
	m.recMu.Lock()
	fn(&m.rec)
	m.recMu.Unlock()
	return m.dir.UpdateState(ctx, func(st *rundir.State) error {
		r, err := recordOf(st)
		if err != nil {
			return err
		}
		fn(r)
		*st = *r.state()
		return nil
	})
}

// Client returns the API client of the VM's Firecracker, for calls this package does not
// wrap (balloon, MMDS updates, metrics flushes...).
func (m *Machine) Client() *fcapi.Client { return m.client }

// ConsolePath returns the file the guest's serial console is written to. It exists while the
// VM runs; Console returns a stream that survives its removal.
func (m *Machine) ConsolePath() string { return m.paths.Serial }

// LogPath returns Firecracker's log file. It exists while the VM runs.
func (m *Machine) LogPath() string { return m.paths.Log }

// Info describes the VM without asking Firecracker; its State is the last one this Machine
// saw (State asks).
func (m *Machine) Info() MachineInfo {
	rec := m.record()
	info := m.mgr.describe(&rec, m.paths)
	info.State = m.lastState()
	return info
}

func (m *Machine) lastState() MachineState {
	if m.exited() {
		return StateExited
	}
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	return m.state
}

func (m *Machine) setState(s MachineState) {
	m.stateMu.Lock()
	m.state = s
	m.stateMu.Unlock()
}

// exited reports whether the process has ended.
func (m *Machine) exited() bool { return m.proc.Exited() }

// Done is closed when the VM has ended and its files have been removed.
func (m *Machine) Done() <-chan struct{} { return m.done }

// State asks Firecracker for the VM's state; it is StateExited once the process has ended.
func (m *Machine) State(ctx context.Context) (MachineState, error) {
	if m.exited() {
		return StateExited, nil
	}
	ii, err := m.client.GetInstanceInfo(ctx)
	if err != nil {
		if m.exited() {
			return StateExited, nil
		}
		return StateUnknown, fmt.Errorf("state of vm %s: %w", m.name, err)
	}
	s := stateOf(ii.State)
	m.setState(s)
	return s, nil
}

// Pause pauses the VM's vCPUs. It returns an error wrapping ErrNotRunning when the VM has
// ended.
func (m *Machine) Pause(ctx context.Context) error {
	if m.exited() {
		return fmt.Errorf("pause vm %s: %w", m.name, ErrNotRunning)
	}
	if err := m.client.PauseVM(ctx); err != nil {
		return fmt.Errorf("pause vm %s: %w", m.name, m.notRunning(err))
	}
	m.setState(StatePaused)
	m.log.Info("vm paused")
	return nil
}

// Resume resumes a paused VM. It returns an error wrapping ErrNotRunning when the VM has
// ended.
func (m *Machine) Resume(ctx context.Context) error {
	if m.exited() {
		return fmt.Errorf("resume vm %s: %w", m.name, ErrNotRunning)
	}
	if err := m.client.ResumeVM(ctx); err != nil {
		return fmt.Errorf("resume vm %s: %w", m.name, m.notRunning(err))
	}
	m.setState(StateRunning)
	if err := m.dir.UnmarkSnapshot(); err != nil {
		m.log.Warn("remove the mark of an interrupted snapshot", "err", err)
	}
	m.log.Info("vm resumed")
	return nil
}

// notRunning adds ErrNotRunning to err when the process died meanwhile (the request then
// typically failed with a connection error).
func (m *Machine) notRunning(err error) error {
	select {
	case <-m.proc.Done():
		return fmt.Errorf("%w: %w", ErrNotRunning, err)
	case <-time.After(50 * time.Millisecond):
		return err
	}
}

// termGrace is how long Stop waits after SIGTERM before SIGKILL. Firecracker does not handle
// SIGTERM, so it dies at once unless something blocks the signal.
const termGrace = time.Second

// Stop shuts the VM down: it sends Ctrl-Alt-Del (resuming a paused VM first, so the guest can
// react), waits up to the manager's stop grace period for the VM to end, then sends SIGTERM,
// waits up to a second, then SIGKILL; with a grace period of 0 it sends SIGTERM at once. Each
// escalation goes to the logger (Info) and to WithStopNotify's function. It returns once the
// VM has ended and its files are removed (for a VM this process started), or when ctx ends:
// then it sends SIGKILL at once and returns an error wrapping ctx.Err() without waiting
// further. Stopping a VM that has ended returns nil.
func (m *Machine) Stop(ctx context.Context) error {
	if m.waitFor(ctx, 0) {
		return nil
	}
	m.log.Info("stopping vm")
	m.markStopping()
	grace := m.mgr.grace
	reason := "no grace period"
	if grace > 0 {
		if !m.askShutdown(ctx) {
			reason = "Ctrl-Alt-Del could not be sent"
		} else {
			if m.waitFor(ctx, grace) {
				m.log.Debug("vm stopped by ctrl-alt-del")
				return nil
			}
			reason = fmt.Sprintf("the guest ignored Ctrl-Alt-Del for %v", grace)
		}
	}
	if ctx.Err() == nil {
		m.escalate("SIGTERM", reason)
		if err := m.proc.Signal(syscall.SIGTERM); errors.Is(err, os.ErrProcessDone) {
			if !m.waitFor(ctx, -1) {
				return fmt.Errorf("stop vm %s: wait for the cleanup: %w", m.name, ctx.Err())
			}
			return nil
		}
		if m.waitFor(ctx, termGrace) {
			return nil
		}
		reason = fmt.Sprintf("firecracker ignored SIGTERM for %v", termGrace)
	} else {
		reason = "the stop ran out of time"
	}
	m.escalate("SIGKILL", reason)
	m.signalKill()
	if ctx.Err() != nil {
		return fmt.Errorf("stop vm %s: killed: %w", m.name, ctx.Err())
	}
	m.waitFor(ctx, -1)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stop vm %s: killed: %w", m.name, err)
	}
	return nil
}

// escalate tells the logger and the stop notifier that Stop sends signal, and why.
func (m *Machine) escalate(signal, reason string) {
	m.log.Info("stop escalates", "signal", signal, "reason", reason)
	if fn := m.mgr.stopNotify; fn != nil {
		fn(StopEscalation{VM: m.name, Signal: signal, Reason: reason})
	}
}

// stopRequestTimeout bounds each API request of Stop, so a Firecracker whose API hangs does
// not hold up the escalation to signals.
const stopRequestTimeout = 2 * time.Second

// askShutdown resumes a paused VM and sends Ctrl-Alt-Del; it reports whether that was sent.
func (m *Machine) askShutdown(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, stopRequestTimeout)
	defer cancel()
	if ii, err := m.client.GetInstanceInfo(ctx); err == nil && ii.State == fcapi.StatePaused {
		if err := m.client.ResumeVM(ctx); err != nil {
			m.log.Debug("resume before ctrl-alt-del", "err", err)
			return false
		}
	}
	if err := m.client.SendCtrlAltDel(ctx); err != nil {
		m.log.Debug("ctrl-alt-del", "err", err)
		return false
	}
	return true
}

// waitFor waits until the VM has ended and been cleaned up, for at most d (d < 0: no limit;
// d == 0: no wait) and never past ctx. It reports whether the VM has ended.
func (m *Machine) waitFor(ctx context.Context, d time.Duration) bool {
	select {
	case <-m.done:
		return true
	default:
	}
	if d == 0 {
		return false
	}
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-m.done:
		return true
	case <-timeout:
	case <-ctx.Done():
	}
	return false
}

func (m *Machine) signalKill() {
	m.markStopping()
	if err := m.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		m.log.Warn("kill firecracker", "pid", m.proc.PID(), "err", err)
	}
}

// killWait is how long Kill and Close wait for a killed process to be gone.
const killWait = 10 * time.Second

// Kill sends SIGKILL to the VM's process and waits until it has ended and its files are
// removed. Killing a VM that has ended returns nil. A process that is still there after 10
// seconds (stuck in the kernel) makes Kill return an error; its files are removed once it
// ends.
func (m *Machine) Kill() error {
	if !m.exited() {
		m.log.Info("killing vm")
		m.markStopping()
		if err := m.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill vm %s: %w", m.name, err)
		}
	}
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-m.proc.Done():
	case <-t.C:
		return fmt.Errorf("kill vm %s: pid %d still there %v after SIGKILL; its files are removed once it ends", m.name, m.proc.PID(), killWait)
	}
	// The cleanup after the end is bounded by its own timeout.
	select {
	case <-m.done:
	case <-m.released:
	}
	return nil
}

// Wait waits for the VM to end (and its files to be removed) and returns how it ended: nil
// for exit code 0 (the guest rebooted or shut down), else an *ExitError with the code or the
// signal. Every caller gets the same result. For an attached VM the exit code cannot be
// known, and Wait returns nil once it has ended. If ctx ends first, Wait returns ctx.Err().
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return m.result
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close releases the VM: it kills the VM if it still runs, waits for it to end, removes
// everything it left (socket, staged drives, runtime directory, base-image in-use marker) and
// closes the console. It returns the errors of that cleanup. It is idempotent and nil-safe.
func (m *Machine) Close() error {
	if m == nil {
		return nil
	}
	m.closeOnce.Do(func() {
		errs := []error{m.Kill()}
		select {
		case <-m.done:
			errs = append(errs, m.cleanupErr)
		default: // Kill gave up on a process that does not die; supervise cleans up later
		}
		m.serial.Close()
		errs = append(errs, m.proc.Release())
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

// Release stops watching the VM and leaves it running, for another process (or a later
// Attach) to adopt: for an attached VM, and for one this process started Detached (this
// process then also lets go of the VM's lock, so once the VM ends, the next reap removes what
// it left). Releasing a VM that has just ended waits for its cleanup, as Close does. It
// returns an error wrapping errors.ErrUnsupported for a VM this process owns, which dies
// with this process anyway: stop it, or start it Detached.
func (m *Machine) Release() error {
	if m.started && m.record().st.Mode == ModeOwned {
		return fmt.Errorf("release vm %s: an owned vm dies with this process and cannot be released (start it Detached to let it outlive this process): %w", m.name, errors.ErrUnsupported)
	}
	m.closeOnce.Do(func() {
		if !m.claimEnd(true) {
			// The VM ended, and supervise is cleaning up after it with the same handles.
			<-m.done
			m.serial.Close()
			m.closeErr = errors.Join(m.cleanupErr, m.proc.Release())
			return
		}
		m.serial.Close()
		m.client.Close()
		errs := []error{m.proc.Release()}
		if m.started {
			errs = append(errs, m.dir.Unlock())
		}
		if m.netns != nil {
			// The network stays with the VM; reaping removes it once the VM has ended.
			m.netns.Close()
		}
		m.mgr.forget(m)
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

// claimEnd decides, once, who lets go of the VM's handles: supervise, cleaning up after the
// VM ended (release false), or Release, leaving the VM running (release true, which also
// stops supervise). It reports whether the caller won.
func (m *Machine) claimEnd(release bool) bool {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	if m.endClaimed {
		return false
	}
	m.endClaimed = true
	if release {
		close(m.released)
	}
	return true
}

// supervise waits for the process to end, records the result and cleans up.
func (m *Machine) supervise() {
	select {
	case <-m.proc.Done():
	case <-m.released:
		return
	}
	if !m.claimEnd(false) {
		return // released meanwhile
	}
	st := m.proc.Status()
	if !st.Known { // a jailed firecracker is not this process's child
		if code, ok := loggedExit(m.paths); ok {
			st.Known, st.Code = true, code
		}
	}
	var tail string
	if st.Known && !st.Success() {
		tail = logTail(m.paths) // before the cleanup removes the logs
		m.result = &ExitError{Code: st.Code, Signal: st.Signal, LogTail: tail}
	}
	m.log.Info("vm exited", "status", st.String())
	// Before the cleanup removes the directory their sockets may be in.
	m.closeVsockListeners()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, m.cleanups[i](ctx))
	}
	errs = append(errs, m.finish(ctx, st, tail))
	m.cleanupErr = errors.Join(errs...)
	if m.cleanupErr != nil {
		m.log.Warn("clean up after vm", "err", m.cleanupErr)
	}
	// Forgotten before done: whoever saw the VM end (Wait) and then asks the manager by its
	// name (Attach, Start) finds the record, not the ended Machine.
	m.mgr.forget(m)
	close(m.done)
}

// finish removes the directory of a VM this process started, once the rest is cleaned up, or,
// for a kept VM (KeepExited), turns it into the record of how the VM ended. A record that
// cannot be written leaves nothing: the directory is removed.
func (m *Machine) finish(ctx context.Context, st proc.Status, logTail string) error {
	if m.removeDir == nil {
		return nil
	}
	if !m.record().st.Keep {
		return m.removeDir(ctx)
	}
	e := exitRecord(st, m.stopping.Load() || m.dir.StopMarked(), int(m.mainExit.Load())-1)
	e.LogTail = logTail
	if err := m.dir.Keep(ctx, e); err != nil {
		return errors.Join(fmt.Errorf("vm %s: %w", m.name, err), m.removeDir(ctx))
	}
	// Keep wrote the end into state.json (with what ran released); the Machine's record
	// ends the same way, so that its Info is List's.
	m.recMu.Lock()
	m.rec.st.Exit = &e
	m.recMu.Unlock()
	m.log.Info("vm kept as exited", "reason", e.Reason)
	return nil
}

// exitRecord is the record of the end of a kept VM whose firecracker ended with st; stopped
// says that smartvm stopped or killed it, and mainExit is the exit code the agent reported for
// the main process (-1: none). A main process whose VM then shut down by itself (as the agent
// powers it off) is the reason it ended.
func exitRecord(st proc.Status, stopped bool, mainExit int) rundir.Exit {
	e := rundir.Exit{Code: st.Code, Signal: st.Signal, Reason: exitReason(st, stopped), At: time.Now().UTC()}
	if mainExit >= 0 {
		e.MainExitCode = &mainExit
		if !stopped && st.Known && st.Success() {
			e.Reason = fmt.Sprintf("main process exited with code %d", mainExit)
		}
	}
	return e
}

// markStopping notes that smartvm ends the VM, for the record of its end (KeepExited): here,
// and, for an attached VM, in its directory, where its owner finds it.
func (m *Machine) markStopping() {
	if m.stopping.Swap(true) || m.started {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopRequestTimeout)
	defer cancel()
	if err := m.dir.MarkStop(ctx); err != nil {
		m.log.Debug("mark the vm as stopped", "err", err)
	}
}

// exitReason says in words how a VM ended, from its firecracker's exit status; stopped says
// that smartvm stopped or killed it.
func exitReason(st proc.Status, stopped bool) string {
	var r string
	switch {
	case !st.Known && stopped:
		return "stopped (exit status unknown)"
	case !st.Known: // a jailed firecracker is not this process's child
		r = "ended (exit status unknown)"
	case st.Success():
		r = "guest reset or shut down (exit code 0)"
	default:
		r = (&ExitError{Code: st.Code, Signal: st.Signal}).Error()
	}
	if stopped {
		r = "stopped: " + r
	}
	return r
}

// ConsoleInput returns a writer whose writes reach the guest's serial input (through the
// serial.in FIFO that is Firecracker's stdin), for a VM started with MachineSpec.SerialInput;
// it works on attached VMs too. Writes block while the FIFO is full (the guest reads slowly
// or not at all), and fail once the VM has ended. Close it when done; Firecracker keeps
// reading, and other writers may come and go.
//
// It returns an error wrapping ErrNoConsoleInput when the VM has no serial input, and
// ErrNotRunning when the VM has ended.
func (m *Machine) ConsoleInput() (io.WriteCloser, error) {
	if !m.Spec().SerialInput {
		return nil, fmt.Errorf("console input of vm %s: %w", m.name, ErrNoConsoleInput)
	}
	if m.exited() {
		return nil, fmt.Errorf("console input of vm %s: %w", m.name, ErrNotRunning)
	}
	// Firecracker holds the FIFO open for reading, so a non-blocking open succeeds at once;
	// with no reader (Firecracker gone) it fails with ENXIO.
	f, err := os.OpenFile(m.paths.SerialIn, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ENXIO) || errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("console input of vm %s: %w", m.name, ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("console input of vm %s: %w", m.name, err)
	}
	return f, nil
}

// Console returns the guest's serial console output as a stream: it reads serial.log from
// its start and follows it until the VM ends, then returns io.EOF. It keeps working after
// the VM's files are removed. Close the stream when done; Machine.Close ends all streams.
func (m *Machine) Console() (io.ReadCloser, error) {
	if m.serial == nil {
		return nil, fmt.Errorf("console of vm %s: serial log not available", m.name)
	}
	return &consoleReader{f: m.serial, ended: m.proc.Done(), closed: make(chan struct{})}, nil
}

// serialCapEvery is how often capSerial checks the size of serial.log.
const serialCapEvery = 250 * time.Millisecond

// capSerial keeps serial.log within the manager's limit (WithSerialLogLimit) until the VM
// ends or is released, through f, the serial.log its start opened for writing (closed on
// return): never reopened by name. Only the process that started the VM runs it: an
// attaching one does not know the limit the VM was started with.
func (m *Machine) capSerial(f *os.File) {
	defer f.Close()
	limit := m.mgr.serialMax
	if limit < 0 {
		return
	}
	t := time.NewTicker(serialCapEvery)
	defer t.Stop()
	for {
		select {
		case <-m.proc.Done():
			return
		case <-m.released:
			return
		case <-t.C:
		}
		if _, err := logcap.Trim(f, limit); err != nil {
			m.log.Warn("bound the serial log", "err", err)
			return
		}
	}
}

// ConsoleLog returns what the guest's serial console has written so far, from the oldest
// byte kept (see WithSerialLogLimit). Close it when done.
func (m *Machine) ConsoleLog() (io.ReadCloser, error) {
	// Through the VM's directory, held open: a regular file of ours, never a link.
	f, err := m.dir.OpenFile(rundir.SerialFile)
	if err != nil {
		return nil, fmt.Errorf("console of vm %s: %w", m.name, err)
	}
	if _, err := f.Seek(logcap.DataStart(f, 0), io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("console of vm %s: %w", m.name, err)
	}
	return f, nil
}

// consolePoll is how often a console stream at the end of the log looks for more.
const consolePoll = 10 * time.Millisecond

type consoleReader struct {
	f      *os.File
	ended  <-chan struct{}
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	off    int64
}

func (r *consoleReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		select {
		case <-r.closed:
			return 0, os.ErrClosed
		default:
		}
		ended := false
		select {
		case <-r.ended:
			ended = true // whatever it wrote is in the file now
		default:
		}
		r.off = logcap.DataStart(r.f, r.off) // skip what WithSerialLogLimit released
		n, err := r.f.ReadAt(p, r.off)
		r.off += int64(n)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read console: %w", err)
		}
		if ended {
			return 0, io.EOF
		}
		t := time.NewTimer(consolePoll)
		select {
		case <-t.C:
		case <-r.ended:
		case <-r.closed:
		}
		t.Stop()
	}
}

func (r *consoleReader) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}

// logTailBytes is how much of the end of each log goes into a log tail.
const logTailBytes = 2048

// logTail returns the ends of firecracker's log and stderr.
func logTail(p rundir.Paths) string {
	var parts []string
	for _, path := range []string{p.Log, p.Stderr} {
		if t := tailOf(path, logTailBytes); t != "" {
			parts = append(parts, t)
		}
	}
	return strings.Join(parts, "\n")
}

// loggedExit returns the exit code firecracker logged as it ended ("Firecracker exiting
// successfully. exit_code=0", "Firecracker exiting with error. exit_code=N"): how one that is
// not this process's child (a jailed one) ended, when it ended by itself. A firecracker
// killed by a signal logs nothing. The log is the jail's file: only the last such line of its
// tail counts, and only a code from 0 to 255.
func loggedExit(p rundir.Paths) (int, bool) {
	t := tailOf(p.Log, logTailBytes)
	i := strings.LastIndex(t, "] Firecracker exiting ")
	if i < 0 {
		return 0, false
	}
	line, _, _ := strings.Cut(t[i:], "\n")
	_, num, ok := strings.Cut(line, " exit_code=")
	if !ok {
		return 0, false
	}
	code, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || code < 0 || code > 255 {
		return 0, false
	}
	return code, true
}

// tailOf returns the last whole lines in the last n bytes of a file.
func tailOf(path string, n int64) string {
	// A jailed firecracker writes its log in its chroot, a directory of the jail's uid: a
	// link or a FIFO put there is never followed or waited on.
	f, err := openNoFollow(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	k, _ := f.ReadAt(b, off)
	b = b[:k]
	if off > 0 {
		if i := strings.IndexByte(string(b), '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimSpace(string(b))
}

// attachMachine builds a Machine for a VM another process started.
func attachMachine(ctx context.Context, mgr *Manager, dir *rundir.Dir, st *rundir.State) (*Machine, error) {
	id := st.Identity()
	p, err := proc.Attach(st.PID, st.StartTime, &id)
	if errors.Is(err, proc.ErrNotOurs) {
		// state.json names a process that is not this VM's firecracker: never signal it.
		return nil, fmt.Errorf("its state.json names pid %d, which is not the firecracker this vm runs (%w); remove the vm with rm -f", st.PID, err)
	}
	if errors.Is(err, os.ErrProcessDone) {
		gone, rerr := dir.Reap(ctx)
		if rerr != nil {
			mgr.log.Warn("reap dead vm", "vm", st.Name, "err", rerr)
		}
		if st.PID == 0 && !gone {
			// No process yet, and its starter holds it: Start has not spawned firecracker.
			return nil, fmt.Errorf("it is still starting (no firecracker process yet); attach once Start has returned: %w", ErrNotFound)
		}
		return nil, fmt.Errorf("its process is gone: %w", ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	log := mgr.log.With("vm", st.Name)
	rec, err := recordOf(st)
	if err != nil {
		log.Warn("read spec from state.json", "err", err)
	}
	ver, _ := fcapi.ParseVersion(st.FirecrackerVersion) // zero (unknown) if unreadable
	client := fcapi.New(st.Paths.APISocket, fcapi.WithVersion(ver), fcapi.WithLogger(log),
		fcapi.WithMaxPayload(rec.spec.apiPayloadLimit()))
	ii, err := client.GetInstanceInfo(ctx)
	if err != nil {
		client.Close()
		p.Release()
		return nil, fmt.Errorf("api does not answer: %w", err)
	}
	m := &Machine{
		mgr:      mgr,
		log:      log,
		name:     st.Name,
		rec:      *rec,
		paths:    mgr.statePaths(st),
		dir:      dir,
		proc:     p,
		client:   client,
		state:    stateOf(ii.State),
		released: make(chan struct{}),
		done:     make(chan struct{}),
	}
	if m.paths.SerialIn == "" { // written by a smartvm before serial input
		m.paths.SerialIn = filepath.Join(m.paths.Dir, rundir.SerialInFile)
	}
	reap := func(ctx context.Context) error { return waitGone(ctx, dir) }
	if rec.network != nil {
		// When its owner is gone, reaping removes the network here: in the namespace Attach
		// was called in, whichever goroutine notices the end.
		if m.netns, err = callerNetns(); err != nil {
			client.Close()
			p.Release()
			return nil, err
		}
		ns := m.netns
		reap = func(ctx context.Context) error {
			defer ns.Close()
			return netdev.InNetns(nsPath(ns), func() error { return waitGone(ctx, dir) })
		}
	}
	m.cleanups = []func(context.Context) error{
		reap,
		func(context.Context) error { client.Close(); return nil },
	}
	if f, err := dir.OpenFile(rundir.SerialFile); err == nil {
		m.serial = f
	}
	return m, nil
}

// waitGone waits until the VM's directory is gone: its owner removes it right after the VM
// ends, and when there is no owner any more, reaping removes it here.
func waitGone(ctx context.Context, dir *rundir.Dir) error {
	for {
		gone, err := dir.Reap(ctx)
		if gone || err != nil {
			return err
		}
		if pid := dir.StoppedOwner(); pid > 0 {
			// It cleans up once continued; waiting for that could take forever.
			return fmt.Errorf("vm %s has ended, but its owner (pid %d) is stopped (SIGSTOP) and cleans up only once it is continued", dir.Name(), pid)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the owner to clean up vm %s: %w", dir.Name(), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
