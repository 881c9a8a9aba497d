package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/smartvm/smartvm"
)

// mainPlan is how run starts the main process of a VM whose init is the agent
// (MachineSpec.AgentMain, as for OCI images): docker run's overrides of the image's config.
type mainPlan struct {
	// Entrypoint, when not nil, replaces the image's entrypoint (--entrypoint; "" clears it).
	Entrypoint *[]string `json:"entrypoint,omitempty"`
	// Cmd, when not empty, replaces the image's Cmd (-- CMD ARG...).
	Cmd []string `json:"cmd,omitempty"`
	// Env is added to the image's environment (-e).
	Env []string `json:"env,omitempty"`
	// Dir and User replace the image's when not empty (-w, -u).
	Dir  string `json:"dir,omitempty"`
	User string `json:"user,omitempty"`
	// TTY and Stdin attach a pseudo-terminal and smartvm's stdin (-t, -i): foreground only.
	TTY   bool `json:"tty,omitempty"`
	Stdin bool `json:"stdin,omitempty"`
	// Console shows the serial console instead of attaching the main process (--console).
	Console bool `json:"console,omitempty"`
}

// command returns the Cmd that starts the main process of m with the plan's overrides
// (Machine.MainCommand: a connection of its own, and m's name as the guest's host name unless
// the image or the kernel command line gives one).
func (p *mainPlan) command(ctx context.Context, m *smartvm.Machine) *smartvm.Cmd {
	c := m.MainCommand(ctx, p.Cmd...)
	c.Env, c.Dir, c.User = p.Env, p.Dir, p.User
	if p.Entrypoint != nil {
		c.Entrypoint = *p.Entrypoint
	}
	return c
}

// planMain applies the flags that shape the main process (-- CMD, -e, -w, -u, --entrypoint,
// -t, -i, --console) to a VM whose init is the agent; for any other VM they are an error.
func (a *app) planMain(p *runPlan, f runFlags) error {
	overrides := f.entrypointSet || len(f.cmd) > 0 || len(f.env) > 0 || f.workdir != "" || f.user != "" || f.tty || f.interactive
	if !p.Spec.AgentMain {
		if overrides {
			return usagef("-- CMD, -e, -w, -u, --entrypoint, -t and -i set the main process of an image whose init is smartvm-agent (an OCI image); this VM's guest runs an init of its own")
		}
		return nil
	}
	if (f.tty || f.interactive) && (f.detach || f.console) {
		return usagef("-t and -i attach the main process to this terminal; with --detach or --console its stdio is the serial console")
	}
	env, err := a.envFlags(f.env)
	if err != nil {
		return err
	}
	mp := &mainPlan{Cmd: f.cmd, Env: env, Dir: f.workdir, User: f.user, TTY: f.tty, Stdin: f.interactive, Console: f.console}
	if f.entrypointSet {
		ep := []string{}
		if f.entrypoint != "" {
			ep = []string{f.entrypoint}
		}
		mp.Entrypoint = &ep
	}
	p.Main = mp
	p.Vsock = true // the agent is reached over vsock
	return nil
}

// envFlags reads -e flags: K=V, or K for its value in smartvm's environment (left out when
// unset there, as docker does).
func (a *app) envFlags(flags []string) ([]string, error) {
	env := make([]string, 0, len(flags))
	for _, kv := range flags {
		if kv == "" || strings.HasPrefix(kv, "=") {
			return nil, usagef("-e %q: want K=V or K", kv)
		}
		if !strings.Contains(kv, "=") {
			v, ok := a.lookupEnv(kv)
			if !ok {
				continue
			}
			kv += "=" + v
		}
		env = append(env, kv)
	}
	return env, nil
}

// startMainDetached starts m's main process with the serial console as its stdio, for run
// --detach and --console, within agentReadyTimeout (the guest is booting).
func startMainDetached(ctx context.Context, m *smartvm.Machine, mp *mainPlan) error {
	sctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	err := mp.command(sctx, m).StartDetached()
	if err != nil && sctx.Err() != nil && ctx.Err() == nil {
		return noAgentError(m)
	}
	return exitCodeOf(err)
}

func noAgentError(m *smartvm.Machine) error {
	return fmt.Errorf("the agent of vm %s did not answer within %s, so its main process was not started: is the image's init smartvm-agent?", m.Name(), agentReadyTimeout)
}

// mainResultWait bounds how long run waits for the main process's exit status once the VM
// has ended or been stopped.
const mainResultWait = 2 * time.Second

// runMain starts m's main process attached to smartvm's stdio, as docker run does, and
// returns its exit code as an *exitError (nil for 0). SIGINT and SIGTERM (ctx) stop the VM,
// which passes SIGTERM on to the main process. Once the main process has ended, the VM, which
// powers off by itself, is stopped if it has not.
//
// The call can break while the VM runs on (a snapshot resets vsock connections): the main
// process then writes to the serial console, and run waits for the exit code the agent also
// reports on AgentHostPort, or for the VM to end.
func (a *app) runMain(ctx context.Context, m *smartvm.Machine, mp *mainPlan, notes io.Writer) error {
	// The ping waits for the agent; the main process's call has a connection of its own.
	ag := m.Agent()
	pctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	_, err := ag.Ping(pctx)
	cancel()
	ag.Close()
	if err != nil {
		if pctx.Err() != nil && ctx.Err() == nil {
			return noAgentError(m)
		}
		return err
	}
	exitCodes, stopWatch := watchExit(ctx, m)
	defer stopWatch()
	// The call is not bound to ctx: a stop request ends the main process through the VM.
	c := mp.command(context.WithoutCancel(ctx), m)
	restore, err := a.startAttached(c, mp.TTY, mp.Stdin)
	if err != nil {
		return err
	}
	defer restore()
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	var mainErr, stopErr error
	stopped := false
	stop := func() {
		fmt.Fprintf(notes, "smartvm: stopping vm %s\n", m.Name())
		stopErr, stopped = stopMachine(ctx, m, stopGrace), true
	}
	select {
	case mainErr = <-waited:
	case <-ctx.Done():
		stop()
		mainErr = awaitMain(waited, m)
	case <-m.Done():
		mainErr = awaitMain(waited, m)
	}
	if broken(mainErr) && !stopped && !done(m) {
		fmt.Fprintf(&terminalSafe{w: notes}, "smartvm: lost the main process's stdio (%s); it runs on, writing to the serial console ('smartvm logs %s')\n", mainErr, m.Name())
		select {
		case code := <-exitCodes:
			mainErr = nil
			if code != 0 {
				mainErr = &smartvm.CommandExitError{Code: code}
			}
		case <-m.Done():
		case <-ctx.Done():
			stop()
		}
	}
	if !stopped {
		// The agent powers the VM off after the main process; this is in case it does not.
		stopErr = stopMachine(ctx, m, stopGrace)
	}
	if ctx.Err() != nil && stopErr != nil {
		return stopErr
	}
	return exitCodeOf(mainErr)
}

// broken reports whether err is a broken call rather than the main process's own failure.
func broken(err error) bool {
	var ce *smartvm.CommandExitError
	return err != nil && !errors.As(err, &ce)
}

func done(m *smartvm.Machine) bool {
	select {
	case <-m.Done():
		return true
	default:
		return false
	}
}

// watchExit answers m's agent on AgentHostPort until stop is called, and passes on the exit
// code it reports for its main process. Answering also spares the guest waiting for an
// answer before it powers off.
func watchExit(ctx context.Context, m *smartvm.Machine) (codes <-chan int, stop func()) {
	ch := make(chan int, 1)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = m.WatchAgent(wctx, func(e smartvm.AgentEvent) {
			if e.Kind == "exit" {
				select {
				case ch <- e.ExitCode:
				default:
				}
			}
		})
	}()
	return ch, func() { cancel(); <-watched }
}

// awaitMain waits a little for the main process's result once the VM has gone.
func awaitMain(waited <-chan error, m *smartvm.Machine) error {
	select {
	case err := <-waited:
		return err
	case <-time.After(mainResultWait):
		return fmt.Errorf("vm %s ended before its main process reported an exit code", m.Name())
	}
}

// startAttached starts c with smartvm's stdout and stderr, its stdin with interactive, and a
// pseudo-terminal with tty (see guestTTY). Call restore once c has ended.
func (a *app) startAttached(c *smartvm.Cmd, tty, interactive bool) (restore func(), err error) {
	c.TTY = tty
	c.Stdout, c.Stderr = a.stdout, a.stderr
	if interactive {
		c.Stdin = a.stdin
	}
	started, restore, err := a.guestTTY(c, tty, interactive)
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		restore()
		return nil, err
	}
	started()
	return restore, nil
}

// guestTTY sets c up for smartvm's terminal when tty is set and stdin is one: c gets its size
// and, with interactive, the terminal goes into raw mode. Call started once c runs (it follows
// the terminal's size from then on) and restore when done.
func (a *app) guestTTY(c *smartvm.Cmd, tty, interactive bool) (started, restore func(), err error) {
	started, restore = func() {}, func() {}
	f, ok := a.stdin.(*os.File)
	if !ok || !tty || !term.IsTerminal(int(f.Fd())) {
		return started, restore, nil
	}
	fd := int(f.Fd())
	if w, h, err := term.GetSize(fd); err == nil {
		c.Cols, c.Rows = uint16(w), uint16(h)
	}
	var old *term.State
	if interactive {
		if old, err = term.MakeRaw(fd); err != nil {
			return nil, nil, fmt.Errorf("put the terminal in raw mode: %w", err)
		}
	}
	winch := make(chan os.Signal, 1)
	started = func() {
		signal.Notify(winch, syscall.SIGWINCH)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(fd); err == nil {
					_ = c.Resize(uint16(h), uint16(w))
				}
			}
		}()
	}
	restore = func() {
		signal.Stop(winch)
		close(winch)
		if old != nil {
			_ = term.Restore(fd, old)
		}
	}
	return started, restore, nil
}
