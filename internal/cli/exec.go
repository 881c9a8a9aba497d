package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// agentBinary finds the static smartvm-agent that run --agent installs and squashfs
// conversions include: $SMARTVM_AGENT_BIN when set, else this smartvm executable (it acts as
// the agent under that name), smartvm-agent next to it, or smartvm-agent in PATH, whichever
// is statically linked first.
func (a *app) agentBinary() (string, error) {
	// One search per invocation: run asks for the base image cache and for the manager,
	// and each search reads ELF headers and walks PATH.
	a.agentBin.once.Do(func() { a.agentBin.path, a.agentBin.err = a.findAgentBinary() })
	return a.agentBin.path, a.agentBin.err
}

func (a *app) findAgentBinary() (string, error) {
	if p := a.getenv(envAgentBin); p != "" {
		return smartvm.FindAgentBinary(p)
	}
	self := a.self
	if self == "" {
		self, _ = os.Executable()
	}
	var candidates []string
	if self != "" {
		candidates = append(candidates, self, filepath.Join(filepath.Dir(self), "smartvm-agent"))
	}
	if p, err := a.lookPath("smartvm-agent"); err == nil {
		candidates = append(candidates, p)
	}
	return smartvm.FindAgentBinary(candidates...)
}

// agentFlags are the flags of commands that reach a guest agent.
type agentFlags struct {
	addr           string
	connectTimeout time.Duration
}

func (f *agentFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "agent-addr", "", "reach smartvm-agent at unix:PATH or tcp:HOST:PORT (where it runs with --listen) instead of in a VM")
	fl.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "how long to wait for the agent to answer")
}

// agent connects to the guest agent of the VM called name, or at --agent-addr when name is
// empty, and checks that it answers within the connect timeout. done releases it all.
func (a *app) agent(ctx context.Context, f *agentFlags, name string) (ag *smartvm.Agent, done func(), err error) {
	switch {
	case f.connectTimeout <= 0:
		return nil, nil, usagef("--connect-timeout must be positive")
	case name != "" && f.addr != "":
		return nil, nil, usagef("name a VM or give --agent-addr, not both")
	case name == "" && f.addr == "":
		return nil, nil, usagef("name a VM, or give --agent-addr unix:PATH or tcp:HOST:PORT")
	}
	where := f.addr
	if name != "" {
		mgr, m, err := a.attachVM(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		ag = m.Agent()
		where = "vm " + name
		done = func() {
			ag.Close()
			_ = m.Release()
			mgr.Close()
		}
	} else {
		if ag, err = smartvm.DialAgent(f.addr); err != nil {
			return nil, nil, usagef("--agent-addr: %s", err)
		}
		done = func() { ag.Close() }
	}
	pctx, cancel := context.WithTimeout(ctx, f.connectTimeout)
	defer cancel()
	if _, err := ag.Ping(pctx); err != nil {
		done()
		switch {
		case errors.Is(err, smartvm.ErrNoVsock):
			return nil, nil, fmt.Errorf("vm %s has no vsock device, so its agent cannot be reached: start it with --agent (or --vsock)", name)
		case pctx.Err() != nil && ctx.Err() == nil:
			return nil, nil, fmt.Errorf("no agent answered in %s within %s: is smartvm-agent running there? (smartvm run --agent installs it)", where, f.connectTimeout)
		}
		return nil, nil, fmt.Errorf("reach the agent in %s: %w", where, err)
	}
	return ag, done, nil
}

type execOptions struct {
	agentFlags
	interactive, tty bool
	env              []string
	dir, user        string
}

func (a *app) newExecCmd() *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [-e K=V]... [-w DIR] [-u USER] (NAME | --agent-addr ADDR) [--] CMD [ARG...]",
		Short: "Run a command in a guest through its agent",
		Long: `Run CMD in a guest through smartvm-agent, docker exec style: its output comes to
smartvm's stdout and stderr, and smartvm exits with its exit code (128+N when signal N
killed it; 127 when the guest has no such command, 126 when it cannot run it).

The agent of the VM called NAME is reached over its vsock device (start the VM with --agent,
which installs the agent and adds the device). --agent-addr reaches an agent directly
instead, at unix:PATH or tcp:HOST:PORT where smartvm-agent runs with --listen. If the agent
does not answer within --connect-timeout, exec fails.

-i passes smartvm's stdin to the command. -t runs it on a pseudo-terminal, which follows the
size of smartvm's terminal; with both, smartvm's terminal is put in raw mode while it runs.
-e sets a variable (K=V, or K alone for its value here), -w the working directory (default:
the user's home) and -u the user (a name, uid, or user:group; default root).`,
		Example: `  smartvm exec web -- uname -a
  smartvm exec -it web -- bash
  smartvm exec --agent-addr unix:/run/agent.sock -- uname -a
  smartvm exec -it --agent-addr tcp:10.0.0.2:10700 -- sh
  smartvm exec -e DEBUG=1 -w /srv -u www-data --agent-addr unix:/run/agent.sock -- ./job`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 || (len(args) == 1 && args[0] == "--") {
				return usagef("want a command to run (after --)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if o.addr == "" {
				if cmd.ArgsLenAtDash() == 0 {
					return usagef("name a VM before --, or give --agent-addr")
				}
				if args[0] != "--" {
					name, args = args[0], args[1:]
				}
			}
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			if len(args) == 0 {
				return usagef("want a command to run (after --)")
			}
			return a.exec(cmd.Context(), &o, name, args)
		},
	}
	cmd.Flags().SetInterspersed(false)
	fl := cmd.Flags()
	fl.BoolVarP(&o.interactive, "interactive", "i", false, "pass stdin to the command")
	fl.BoolVarP(&o.tty, "tty", "t", false, "run the command on a pseudo-terminal")
	fl.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable: K=V, or K for its value here (repeatable)")
	fl.StringVarP(&o.dir, "workdir", "w", "", "working directory in the guest (default: the user's home)")
	fl.StringVarP(&o.user, "user", "u", "", "user to run as: a name, uid, or user:group (default: root)")
	o.agentFlags.register(cmd)
	return cmd
}

func (a *app) exec(ctx context.Context, o *execOptions, name string, command []string) error {
	env, err := a.envFlags(o.env)
	if err != nil {
		return err
	}
	ag, done, err := a.agent(ctx, &o.agentFlags, name)
	if err != nil {
		return err
	}
	defer done()

	c := ag.Command(ctx, command[0], command[1:]...)
	c.Env, c.Dir, c.User = env, o.dir, o.user
	// With -t on a terminal: its size, raw mode with -i, and resizes as it changes.
	restore, err := a.startAttached(c, o.tty, o.interactive)
	if err != nil {
		return err
	}
	defer restore()
	return exitCodeOf(c.Wait())
}

// exitCodeOf turns a guest command's failure into smartvm's exit code.
func exitCodeOf(err error) error {
	var ee *smartvm.CommandExitError
	if !errors.As(err, &ee) {
		return err
	}
	// The reason comes from the guest: run prints it through terminalSafe.
	return &exitError{code: ee.Code, msg: ee.Reason}
}
