package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrPIDReused reports that the recorded pid now belongs to a different process.
var ErrPIDReused = errors.New("pid belongs to a different process now")

// Start starts the process described by cfg.
//
// In the default owned mode the process is spawned from a goroutine locked to its OS thread,
// and that goroutine stays alive, waiting for the process on the same thread, until the process
// ends. The kernel delivers the parent-death signal when the thread that forked the child
// exits, not when the process does, so this keeps the signal tied to this process's life.
func Start(cfg Config) (*Process, error) {
	if cfg.Stdout == nil || cfg.Stderr == nil {
		return nil, errors.New("start process: stdout and stderr files are required")
	}
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Env = cfg.Env
	cmd.Dir = cfg.Dir
	cmd.Stdout = cfg.Stdout
	cmd.Stderr = cfg.Stderr
	if cfg.Stdin != nil {
		cmd.Stdin = cfg.Stdin
	}
	cmd.ExtraFiles = cfg.ExtraFiles
	switch {
	case cfg.Detached:
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	case cfg.NoDeathSignal:
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	default:
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}

	p := &Process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		if !cfg.Detached && !cfg.NoDeathSignal {
			// Never unlocked: when this goroutine returns, its thread exits with it, which
			// is harmless because the child has been reaped by then.
			runtime.LockOSThread()
		}
		var err error
		if cfg.MountNS != nil {
			// Never unlocked: the thread's mount namespace is not this process's any more,
			// so it must not run other goroutines; it exits with this goroutine.
			runtime.LockOSThread()
			if err = ownMountNS(cfg.MountNS); err != nil {
				started <- err
				return
			}
		}
		if cfg.Around != nil {
			runtime.LockOSThread() // for Around's whole run, nested in the lock above
			err = cfg.Around(cmd.Start)
			runtime.UnlockOSThread()
		} else {
			err = cmd.Start()
		}
		if err != nil {
			if cmd.Process != nil {
				// Around failed after the fork (it could not move the thread back, say).
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		// The child cannot be reaped before Wait below, so its stat is readable here even
		// if it has already exited.
		st, err := StartTime(p.pid)
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			started <- err
			return
		}
		p.startTime = st
		started <- nil
		err = cmd.Wait()
		p.status = statusOf(cmd.ProcessState, err)
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Path, err)
	}
	p.signal = func(sig syscall.Signal) error {
		err := cmd.Process.Signal(sig)
		if errors.Is(err, os.ErrProcessDone) {
			return os.ErrProcessDone
		}
		return err
	}
	return p, nil
}

// ownMountNS moves the calling thread, locked to its goroutine for good, into a new mount
// namespace whose mounts do not propagate back, and runs setup there.
func ownMountNS(setup func() error) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the mounts of the new mount namespace private: %w", err)
	}
	return setup()
}

func statusOf(ps *os.ProcessState, waitErr error) Status {
	if ps == nil {
		// Wait failed before the process was reaped; this does not happen for a child we
		// started, but report it honestly rather than inventing a code.
		return Status{Code: -1}
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return Status{Known: true, Code: -1, Signal: unix.SignalName(ws.Signal())}
	}
	_ = waitErr // an *exec.ExitError for non-zero codes; the code is in ps
	return Status{Known: true, Code: ps.ExitCode()}
}

// Attach watches a process this program did not start, identified by pid and start time,
// through a pidfd. Its exit status cannot be learned (Status.Known is false once it ends).
// It returns an error wrapping os.ErrProcessDone when no such process runs, either because
// the pid is gone (or is not a process id at all, such as 0) or because it now belongs to
// another process (then also ErrPIDReused). With id, the process must also match it (Check),
// or Attach fails with an error wrapping ErrNotOurs: a recorded pid is never trusted to name
// the process smartvm started.
func Attach(pid int, startTime uint64, id *Identity) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("attach pid %d: not a process id: %w", pid, os.ErrProcessDone)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("attach pid %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return nil, fmt.Errorf("attach pid %d: open pidfd: %w", pid, err)
	}
	// The pidfd pins the process: check its start time after opening it, so the check
	// applies to the process the pidfd refers to.
	st, state, err := readStat(pid)
	switch {
	case err != nil:
	case st != startTime:
		err = fmt.Errorf("%w: %w", ErrPIDReused, os.ErrProcessDone)
	case ended(state):
		err = os.ErrProcessDone
	case id != nil:
		err = Check(pid, *id)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach pid %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("attach pid %d: %w", pid, err)
	}
	p := &Process{pid: pid, startTime: startTime, done: make(chan struct{})}
	var once sync.Once
	p.release = func() error {
		var err error
		once.Do(func() { err = f.Close() })
		return err
	}
	p.signal = func(sig syscall.Signal) error {
		var serr error
		cerr := rc.Control(func(fd uintptr) {
			serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
		})
		if cerr != nil {
			return cerr
		}
		if errors.Is(serr, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return serr
	}
	go func() {
		// A pidfd becomes readable when the process ends. Read waits through the runtime
		// poller, and returns an error once Release closes the file.
		err := rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(pfd, 0)
			return err == nil && n > 0
		})
		if err != nil {
			return
		}
		p.status = Status{Code: -1}
		close(p.done)
		p.release()
	}()
	return p, nil
}

// StartTime returns the start time of process pid, in clock ticks since boot (field 22 of
// /proc/<pid>/stat). It returns an error wrapping os.ErrProcessDone when there is no such
// process.
func StartTime(pid int) (uint64, error) {
	st, _, err := readStat(pid)
	return st, err
}

// Alive reports whether process pid runs and started at startTime. A zombie (ended but not
// yet reaped) is not alive.
func Alive(pid int, startTime uint64) (bool, error) {
	st, state, err := readStat(pid)
	if errors.Is(err, os.ErrProcessDone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st != startTime {
		return false, nil
	}
	return !ended(state), nil
}

// Exiting reports whether process pid, started at startTime, is ending but not gone: its
// main thread has exited (Alive reports false), yet some of its threads still run, so its
// open files, sockets and devices are not released yet. A multi-threaded process killed with
// SIGKILL passes through this state for a moment. It is false for a running process and for
// one that is gone, or only a zombie waiting to be reaped.
func Exiting(pid int, startTime uint64) (bool, error) {
	if pid <= 0 {
		return false, nil
	}
	// A pidfd of the process becomes readable once every thread of it has exited.
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("process %d: open pidfd: %w", pid, err)
	}
	defer unix.Close(fd)
	st, state, err := readStat(pid)
	if errors.Is(err, os.ErrProcessDone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st != startTime || !ended(state) {
		return false, nil
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	if err != nil {
		return false, fmt.Errorf("process %d: poll pidfd: %w", pid, err)
	}
	return n == 0, nil
}

// ended reports whether a /proc stat state letter means the process has ended: a zombie
// waiting to be reaped, or dead.
func ended(state byte) bool { return state == 'Z' || state == 'X' || state == 'x' }

func readStat(pid int) (startTime uint64, state byte, err error) {
	if pid <= 0 {
		return 0, 0, fmt.Errorf("read process %d: invalid pid: %w", pid, os.ErrProcessDone)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return 0, 0, fmt.Errorf("read process %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read process %d: %w", pid, err)
	}
	return parseStat(b)
}

// parseStat extracts the state (field 3) and start time (field 22) from a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (startTime uint64, state byte, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("parse /proc stat: no command name")
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, errors.New("parse /proc stat: too few fields")
	}
	st, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc stat start time: %w", err)
	}
	return st, fields[0][0], nil
}

// Threads returns the names (comm) of process pid's threads, such as "fc_vcpu 0". It returns
// an error wrapping os.ErrProcessDone when there is no such process.
func Threads(pid int) ([]string, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("threads of %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/comm")
		if err != nil {
			continue // the thread ended meanwhile
		}
		names = append(names, string(bytes.TrimSpace(b)))
	}
	return names, nil
}
