package jailer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/smartvm/smartvm/internal/proc"
)

// Jail is a firecracker started by the jailer inside a Guard's namespace.
type Jail struct {
	Config Config
	Guard  *Guard
	// Firecracker is the jailed firecracker. With NewPIDNS it is watched through a pidfd: it
	// is the guard's child, not this process's, so its exit status is not known
	// (Status.Known is false). Without, it is the jailer's own process, this process's child.
	Firecracker *proc.Process
	// Jailer is how the jailer itself ended, with NewPIDNS (it exits once firecracker is
	// cloned into the new namespace).
	Jailer proc.Status
}

// Launch starts the jailer as cfg says, with pc's stdio, inside a new Guard, and waits until
// the jailer has handed over to firecracker. pc.Path and pc.Args are set from cfg, pc.Detached
// from cfg.Detached, and pc.NoDeathSignal is set (the guard, not a parent-death signal, ties
// the jail to this process); pc.Around, if set, runs around the guard's own (to enter a
// network namespace, say). cfg.Daemonize must be false. On failure nothing it started is left
// running; the chroot and cgroups the jailer may have made are the caller's to remove
// (Remove).
func Launch(jailerBin string, cfg Config, pc proc.Config) (*Jail, error) {
	if err := checkLaunch(cfg); err != nil {
		return nil, err
	}
	g, err := StartGuard(cfg.Detached)
	if err != nil {
		return nil, err
	}
	return launchGuarded(g, jailerBin, cfg, pc)
}

// LaunchIn is Launch in guard g, started beforehand (GoStartGuard) as cfg.Detached says. It
// takes g over: on failure g is closed, on success it is the Jail's.
func LaunchIn(g *Guard, jailerBin string, cfg Config, pc proc.Config) (*Jail, error) {
	err := checkLaunch(cfg)
	if err == nil && g.detached != cfg.Detached {
		err = fmt.Errorf("%w: the jail guard's parent-death signal does not match detached=%t", ErrInvalid, cfg.Detached)
	}
	if err != nil {
		g.Close()
		return nil, err
	}
	return launchGuarded(g, jailerBin, cfg, pc)
}

// checkLaunch checks cfg before a guard is started for it.
func checkLaunch(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Daemonize {
		return fmt.Errorf("%w: a supervised jail cannot be daemonized", ErrInvalid)
	}
	return nil
}

// launchGuarded is Launch in guard g, which it closes on failure.
func launchGuarded(g *Guard, jailerBin string, cfg Config, pc proc.Config) (*Jail, error) {
	pc.Path, pc.Args = jailerBin, cfg.Args()
	// Go's child code kills itself when, with a parent-death signal, its parent pid is not
	// the one it forked from, which getppid in another PID namespace never is (it reads 0).
	// The guard's death ends the jailer and firecracker anyway, so neither needs the signal.
	// A detached jail gets a session of its own; an owned one only a process group, as an
	// unjailed firecracker does: a new session is a new scheduling group under autogroup,
	// which on a busy host made every jailed start several times slower.
	pc.Detached = cfg.Detached
	pc.NoDeathSignal = true
	if outer := pc.Around; outer != nil {
		pc.Around = func(start func() error) error { return outer(func() error { return g.Around(start) }) }
	} else {
		pc.Around = g.Around
	}
	jp, err := proc.Start(pc)
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("start jailer: %w", err)
	}
	if !cfg.NewPIDNS {
		// The jailer execs firecracker in place: this child is firecracker (once the jailer
		// has set up the jail), and its exit status is known.
		return &Jail{Config: cfg, Guard: g, Firecracker: jp}, nil
	}
	<-jp.Done()
	jailed := time.Now()
	j := &Jail{Config: cfg, Guard: g, Jailer: jp.Status()}
	fail := func(err error) (*Jail, error) {
		g.Close()
		return nil, err
	}
	if !j.Jailer.Success() {
		return fail(fmt.Errorf("jailer failed (%s): %w", j.Jailer, ErrJailerFailed))
	}
	ch := cfg.Chroot()
	b, err := os.ReadFile(ch.PIDFile())
	if err != nil {
		return fail(fmt.Errorf("read firecracker's pid from the jail: %w", err))
	}
	nspid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fail(fmt.Errorf("read firecracker's pid from the jail: %w", err))
	}
	pid, err := g.Member(nspid, 0, jp.PID())
	if err != nil {
		return fail(fmt.Errorf("find the jailed firecracker: %w", err))
	}
	st, err := proc.StartTime(pid)
	if err == nil {
		j.Firecracker, err = proc.Attach(pid, st, nil)
	}
	if err != nil {
		return fail(fmt.Errorf("watch the jailed firecracker: %w", err))
	}
	// The clone may still be building the jail: it is firecracker once it runs as the jail's
	// uid. That takes a few milliseconds, all of them in the start's latency, so the check
	// (one read of /proc/<pid>/status) repeats at most dropPollMax apart.
	for pause := 100 * time.Microsecond; ; pause = min(2*pause, dropPollMax) {
		err := proc.Check(pid, proc.Identity{UID: cfg.UID})
		if err == nil {
			return j, nil
		}
		select {
		case <-j.Firecracker.Done():
			return fail(fmt.Errorf("jailed firecracker ended before it ran: %w", ErrJailerFailed))
		case <-time.After(pause):
		}
		if time.Since(jailed) > dropTimeout {
			j.Firecracker.Release()
			return fail(fmt.Errorf("jailed firecracker did not drop to uid %d within %v: %w", cfg.UID, dropTimeout, err))
		}
	}
}

// dropTimeout bounds the wait for the jailer's clone to become firecracker.
const dropTimeout = 10 * time.Second

// dropPollMax is the longest pause between two checks of whether the jailer's clone has
// become firecracker.
const dropPollMax = time.Millisecond

// ErrJailerFailed reports that the jailer exited with an error before starting firecracker;
// its stderr says why.
var ErrJailerFailed = errors.New("jailer failed")

// Close kills the jail's processes and releases them; it is safe to call more than once.
func (j *Jail) Close() error {
	err := j.Guard.Close()
	if j.Firecracker != nil {
		<-j.Firecracker.Done()
	}
	return err
}
