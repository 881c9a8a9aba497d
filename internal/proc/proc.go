package proc

import (
	"fmt"
	"os"
	"syscall"
)

// Config describes a process to start.
type Config struct {
	// Path is the executable. It is run as given (no PATH search happens for paths with a
	// slash).
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is the environment; nil inherits this process's environment.
	Env []string
	// Dir is the working directory; empty means this process's.
	Dir string
	// Stdout and Stderr receive the process's output. Both are required: the child must never
	// share this process's own stdio, whose open file description firecracker would switch to
	// non-blocking mode. The caller may close them once Start returns.
	Stdout, Stderr *os.File
	// Stdin is the process's standard input (a FIFO, say); the caller may close it once
	// Start returns. Nil means /dev/null.
	Stdin *os.File
	// ExtraFiles are passed to the process as descriptors 3, 4, ... (exec.Cmd.ExtraFiles):
	// a lock held through one of them lasts as long as the process. The caller may close
	// them once Start returns.
	ExtraFiles []*os.File
	// Around, when set, runs start, which forks the process, and returns its error. It runs
	// on the OS thread that forks, locked to its goroutine, so it can move that thread into
	// another namespace for the fork and back afterwards (netdev.InNetns): the process is
	// born in that namespace. Nil forks directly.
	Around func(start func() error) error
	// MountNS, when set, gives the process a mount namespace of its own: the forking thread
	// leaves this process's mount namespace (unshare CLONE_NEWNS, every mount made private
	// so nothing propagates back), runs MountNS to change the mounts the process will see,
	// then forks (through Around, if set). That thread is never used for anything else and
	// exits once the process has been reaped. An error from MountNS fails Start before the
	// fork. Needs CAP_SYS_ADMIN.
	MountNS func() error
	// Detached starts the process in a new session with no parent-death signal, so it
	// outlives this process. When false (the default), the process gets its own process group
	// and is sent SIGKILL when this process dies, however it dies.
	Detached bool
	// NoDeathSignal, with Detached false, leaves out the parent-death signal: the process
	// gets its own process group in this process's session and is tied to this process
	// another way (a jail's guard, whose death ends its PID namespace). A session of its own
	// costs a process start-up latency where sessions are scheduling groups (autogroup): on a
	// busy host a new group's first milliseconds get little CPU.
	NoDeathSignal bool
}

// Status is how a process ended.
type Status struct {
	// Known is false when the exit status could not be observed: the process was not a child
	// of this process (see Attach), so only the fact that it ended is known.
	Known bool
	// Code is the exit code when the process exited normally; -1 when it was killed by a
	// signal or the status is unknown.
	Code int
	// Signal names the signal that killed the process, such as "SIGKILL"; empty otherwise.
	Signal string
}

// Success reports whether the process exited normally with code 0.
func (s Status) Success() bool { return s.Known && s.Signal == "" && s.Code == 0 }

// String describes the status, as in "exit code 1" or "signal SIGKILL".
func (s Status) String() string {
	switch {
	case !s.Known:
		return "exit status unknown"
	case s.Signal != "":
		return "signal " + s.Signal
	default:
		return fmt.Sprintf("exit code %d", s.Code)
	}
}

// Process is a started or attached process. Its methods are safe for concurrent use.
type Process struct {
	pid       int
	startTime uint64
	done      chan struct{}
	status    Status // written once, before done is closed

	signal  func(syscall.Signal) error
	release func() error
}

// PID returns the process id.
func (p *Process) PID() int { return p.pid }

// StartTime returns the process start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat), which together with the pid identifies the process.
func (p *Process) StartTime() uint64 { return p.startTime }

// Done is closed when the process has ended (and, for a child, has been reaped).
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, without blocking.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Status returns how the process ended. It is the zero Status until Done is closed.
func (p *Process) Status() Status {
	select {
	case <-p.done:
		return p.status
	default:
		return Status{}
	}
}

// Signal sends sig to the process. It returns an error wrapping os.ErrProcessDone when the
// process has already ended. Signals never reach a different process that reused the pid.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("signal pid %d: %w", p.pid, os.ErrProcessDone)
	}
	if err := p.signal(sig); err != nil {
		return fmt.Errorf("signal pid %d: %w", p.pid, err)
	}
	return nil
}

// Release stops watching an attached process: Done will not be closed afterwards unless the
// process had already ended. For a child it does nothing, since a child is always reaped. It
// is safe to call more than once.
func (p *Process) Release() error {
	if p.release == nil {
		return nil
	}
	return p.release()
}
