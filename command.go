package smartvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// Cmd is a command to run in the guest through its agent, shaped like os/exec.Cmd: set its
// fields, then Run, or Start and Wait. A Cmd cannot be reused.
type Cmd struct {
	// Args is the command line; Args[0] is looked up in the guest's PATH unless it contains a
	// slash.
	Args []string
	// Env holds KEY=VALUE entries added to the guest's default environment (PATH, HOME, and
	// TERM with a TTY). Zero value: the defaults alone.
	Env []string
	// Dir is the working directory in the guest. Zero value: the user's home directory.
	Dir string
	// User is a user name, a uid, or user:group with names or ids. Zero value: root.
	User string
	// TTY runs the command on a new pseudo-terminal of Rows x Cols (zero: 24x80). Its output
	// then all comes on Stdout.
	TTY        bool
	Rows, Cols uint16
	// Stdin is sent to the command as it reads it. Zero value: the command reads /dev/null.
	Stdin io.Reader
	// Stdout and Stderr receive the command's output. Zero value: discarded.
	Stdout, Stderr io.Writer
	// Entrypoint is for a main command (MainCommand) only: when not nil, it replaces the
	// image's entrypoint, and the image's Cmd is dropped, as with docker run --entrypoint; an
	// empty, non-nil list clears it. Zero value: the image's entrypoint.
	Entrypoint []string
	// Hostname is for a main command (MainCommand) only: when not empty, the guest gets it as
	// its host name before the main process starts, unless the image's config or the kernel
	// command line gave one. Machine.MainCommand sets the VM's name, without the '-' it may
	// end in (as MMDS gives it: see MachineSpec.Name).
	Hostname string

	// main makes it the guest's main process (MainCommand).
	main  bool
	ctx   context.Context
	agent *Agent
	// ownAgent closes agent when the command ends (Machine.Command).
	ownAgent bool
	mu       sync.Mutex
	proc     *agentwire.Process
}

// Command returns a Cmd that runs name with args in the agent's guest. ctx bounds the whole
// command: when it ends, the command is killed in the guest.
func (a *Agent) Command(ctx context.Context, name string, args ...string) *Cmd {
	return &Cmd{Args: append([]string{name}, args...), ctx: ctx, agent: a}
}

// MainCommand returns a Cmd that starts the guest's main process: the command the agent,
// as the guest's init, waits to run (see MachineSpec.AgentMain): an OCI image's Entrypoint
// and Cmd, with its Env, WorkingDir and User. The Cmd's fields override them, as docker run's
// flags do: Args (when not empty) replace the image's Cmd, Entrypoint its entrypoint, Env is
// added to its environment, and Dir and User (when not empty) replace its own. ctx bounds
// the call: when it ends, the call ends (Wait fails) but the main process runs on, writing to
// the guest's console. The VM powers off when the main process ends.
//
// The agent starts one main process: a second Start fails, as does one for a guest not
// booted with MachineSpec.AgentMain.
func (a *Agent) MainCommand(ctx context.Context, args ...string) *Cmd {
	return &Cmd{Args: args, ctx: ctx, agent: a, main: true}
}

// CommandExitError reports a command that did not exit with code 0: its exit code, the
// signal that killed it, or why it could not start.
type CommandExitError struct {
	// Code is the exit code; 128+N for a command killed by signal N; 127 for a command not
	// found and 126 for one that cannot run (not executable, unknown user, missing
	// directory), as shells report them.
	Code int
	// Signal is the signal that killed the command; zero when it exited.
	Signal syscall.Signal
	// Reason says why the command could not start; empty when it ran.
	Reason string
}

func (e *CommandExitError) Error() string {
	switch {
	case e.Reason != "":
		return fmt.Sprintf("guest command failed to start (exit code %d): %s", e.Code, e.Reason)
	case e.Signal != 0:
		return fmt.Sprintf("guest command killed by signal %s", e.Signal)
	}
	return fmt.Sprintf("guest command exited with code %d", e.Code)
}

// Start starts the command and returns once it runs in the guest (or could not start, which
// Wait then reports).
func (c *Cmd) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.proc != nil:
		return errors.New("smartvm: Cmd already started")
	case c.agent == nil:
		return errors.New("smartvm: Cmd not made by Agent.Command")
	case len(c.Args) == 0 && !c.main:
		return errors.New("smartvm: Cmd has no command")
	}
	return c.start(false)
}

// StartDetached starts a main command (MainCommand) with the guest's console as its stdio,
// so that its output goes to the VM's serial console (Stdin, Stdout, Stderr and TTY are not
// used), and returns once it runs. Wait then returns at once: the main process's exit code is
// reported only to WatchAgent, and the VM powers off when it ends. A command that could not
// start gives a *CommandExitError.
func (c *Cmd) StartDetached() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.proc != nil:
		return errors.New("smartvm: Cmd already started")
	case c.agent == nil || !c.main:
		return errors.New("smartvm: StartDetached needs a Cmd made by MainCommand")
	}
	if err := c.start(true); err != nil {
		return err
	}
	if c.ownAgent {
		c.agent.Close()
	}
	if st, _ := c.proc.Wait(); st.Code != 0 || st.Error != "" {
		return &CommandExitError{Code: st.Code, Reason: st.Error}
	}
	return nil
}

// start makes the agent call; c.mu is held.
func (c *Cmd) start(detach bool) error {
	stdio := agentwire.ExecIO{Stdin: c.Stdin, Stdout: c.Stdout, Stderr: c.Stderr}
	var p *agentwire.Process
	var err error
	if c.main {
		start := agentwire.MainStart{Cmd: c.Args, Env: c.Env, Dir: c.Dir, User: c.User, TTY: c.TTY, Rows: c.Rows, Cols: c.Cols, Detach: detach, Hostname: c.Hostname}
		if c.Entrypoint != nil {
			start.Entrypoint = &c.Entrypoint
		}
		p, err = c.agent.c.Main(c.ctx, start, stdio)
	} else {
		start := agentwire.ExecStart{Args: c.Args, Env: c.Env, Dir: c.Dir, User: c.User, TTY: c.TTY, Rows: c.Rows, Cols: c.Cols}
		p, err = c.agent.c.Exec(c.ctx, start, stdio)
	}
	if err != nil {
		if c.ownAgent {
			c.agent.Close()
		}
		return err
	}
	c.proc = p
	return nil
}

// Wait waits for the command to end and its output to be written. It returns nil when the
// command exited with code 0, a *CommandExitError when it ran (or not) and failed, and another
// error when the call broke (the connection, ctx, writing output).
func (c *Cmd) Wait() error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return errors.New("smartvm: Cmd not started")
	}
	st, err := p.Wait()
	if c.ownAgent {
		c.agent.Close()
	}
	if err != nil {
		return err
	}
	if st.Code == 0 && st.Signal == 0 && st.Error == "" {
		return nil
	}
	return &CommandExitError{Code: st.Code, Signal: syscall.Signal(st.Signal), Reason: st.Error}
}

// Run starts the command and waits for it.
func (c *Cmd) Run() error {
	if err := c.Start(); err != nil {
		return err
	}
	return c.Wait()
}

// Output runs the command and returns its standard output.
func (c *Cmd) Output() ([]byte, error) {
	if c.Stdout != nil {
		return nil, errors.New("smartvm: Stdout already set")
	}
	var b bytes.Buffer
	c.Stdout = &b
	err := c.Run()
	return b.Bytes(), err
}

// CombinedOutput runs the command and returns its standard output and error together.
func (c *Cmd) CombinedOutput() ([]byte, error) {
	if c.Stdout != nil || c.Stderr != nil {
		return nil, errors.New("smartvm: Stdout or Stderr already set")
	}
	var b syncBuffer
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	return b.bytes(), err
}

// syncBuffer is a buffer that stdout and stderr write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Bytes()
}

// PID returns the command's process id in the guest; 0 before Start or when it did not start.
func (c *Cmd) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.PID()
}

// Signal sends sig to the started command (to its process group with a TTY).
func (c *Cmd) Signal(sig syscall.Signal) error {
	p, err := c.started()
	if err != nil {
		return err
	}
	return p.Signal(int(sig))
}

// Resize changes the size of the started command's TTY.
func (c *Cmd) Resize(rows, cols uint16) error {
	p, err := c.started()
	if err != nil {
		return err
	}
	return p.Resize(rows, cols)
}

func (c *Cmd) started() (*agentwire.Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil, errors.New("smartvm: Cmd not started")
	}
	return c.proc, nil
}
