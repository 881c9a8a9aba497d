package agentwire

import (
	"errors"
	"fmt"
	"strings"
)

// MainWaitArg is the kernel command line argument that makes the agent, as PID 1, wait for
// a Main call before it starts the init config's entrypoint, so that the host is attached
// before the main process writes anything.
const MainWaitArg = "smartvm.main=wait"

// Bounds of a MainStart: the host is not trusted by the agent, and the kernel refuses larger
// command lines anyway (MAX_ARG_STRLEN is 128 KiB, ARG_MAX about 2 MiB).
const (
	// MaxMainArgs is the most entries Entrypoint and Cmd hold together.
	MaxMainArgs = 4096
	// MaxMainEnv is the most Env entries.
	MaxMainEnv = 4096
	// MaxMainString is the most bytes of one argument, environment entry, Dir or User.
	MaxMainString = 128 << 10
	// MaxMainTotal is the most bytes of all the strings together.
	MaxMainTotal = 1 << 20
)

// MainStart is the first message of a Main call: it starts the guest's main process, the
// command of the agent's init config (an OCI image's Entrypoint and Cmd), with the host's
// overrides, as docker run does. Everything not set keeps the init config's value.
type MainStart struct {
	// Entrypoint, when not nil, replaces the init config's entrypoint, and the config's Cmd
	// is dropped (as docker run --entrypoint does); an empty list clears it.
	Entrypoint *[]string `json:"entrypoint,omitempty"`
	// Cmd, when not empty, replaces the init config's Cmd.
	Cmd []string `json:"cmd,omitempty"`
	// Env holds KEY=VALUE entries added to the init config's environment, later ones
	// winning.
	Env []string `json:"env,omitempty"`
	// Dir replaces the init config's working directory when not empty.
	Dir string `json:"dir,omitempty"`
	// User replaces the init config's user when not empty: a name, a uid, or user:group.
	User string `json:"user,omitempty"`
	// TTY, Rows, Cols and Stdin are as in ExecStart.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin says that the client will send stdin; without it the process reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Detach gives the process the agent's own stdio (the guest's console) and ends the call
	// once it runs: nothing is streamed, and its exit code is reported only on HostPort.
	Detach bool `json:"detach,omitempty"`
	// Hostname, when not empty, is the guest's host name for the main process (as docker gives
	// a container its name): a PID 1 agent sets it before the process starts, unless the init
	// config or the kernel command line (ip=, MMDS) gave one. smartvm sends the VM's name.
	Hostname string `json:"hostname,omitempty"`
}

// MaxHostname bounds MainStart.Hostname (the kernel's limit).
const MaxHostname = 64

// checkHostname accepts a host name of 1 to MaxHostname letters, digits, '-' and '.', that
// starts with a letter or digit.
func checkHostname(h string) error {
	if len(h) > MaxHostname {
		return fmt.Errorf("host name %.40q... is %d bytes long: at most %d are allowed", h, len(h), MaxHostname)
	}
	for i, c := range []byte(h) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '.')
		if !ok {
			return fmt.Errorf("host name %q: want letters, digits, '-' and '.', starting with a letter or digit", h)
		}
	}
	return nil
}

// Check checks the bounds of m: counts, sizes, NUL bytes and the form of Env entries.
func (m *MainStart) Check() error {
	var args []string
	if m.Entrypoint != nil {
		args = append(args, *m.Entrypoint...)
	}
	args = append(args, m.Cmd...)
	if err := checkCommand(args, m.Env, m.Dir, m.User); err != nil {
		return err
	}
	if m.Hostname != "" {
		if err := checkHostname(m.Hostname); err != nil {
			return err
		}
	}
	if m.Detach && (m.Stdin || m.TTY) {
		return errors.New("a detached main process has the console as its stdio: no stdin or TTY from the client")
	}
	return nil
}

// Check checks the bounds of e as MainStart.Check does (the same limits), and that it names
// a command.
func (e *ExecStart) Check() error {
	if len(e.Args) == 0 || e.Args[0] == "" {
		return errors.New("no command")
	}
	return checkCommand(e.Args, e.Env, e.Dir, e.User)
}

// checkCommand checks the bounds of a command's arguments, environment, directory and user:
// counts, sizes, NUL bytes and the form of env entries.
func checkCommand(args, env []string, dir, user string) error {
	total := 0
	str := func(what, s string) error {
		total += len(s)
		switch {
		case len(s) > MaxMainString:
			return fmt.Errorf("%s is %d bytes long: at most %d are allowed", what, len(s), MaxMainString)
		case strings.IndexByte(s, 0) >= 0:
			return fmt.Errorf("%s contains a NUL byte", what)
		}
		return nil
	}
	if len(args) > MaxMainArgs {
		return fmt.Errorf("the command has %d arguments: at most %d are allowed", len(args), MaxMainArgs)
	}
	if len(env) > MaxMainEnv {
		return fmt.Errorf("%d environment variables: at most %d are allowed", len(env), MaxMainEnv)
	}
	for i, a := range args {
		if err := str(fmt.Sprintf("argument %d", i), a); err != nil {
			return err
		}
	}
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("environment entry %.40q: want KEY=VALUE", kv)
		}
		if err := str("environment variable "+k, kv); err != nil {
			return err
		}
	}
	if err := str("the working directory", dir); err != nil {
		return err
	}
	if err := str("the user", user); err != nil {
		return err
	}
	if total > MaxMainTotal {
		return fmt.Errorf("the command, environment, directory and user take %d bytes: at most %d are allowed", total, MaxMainTotal)
	}
	return nil
}
