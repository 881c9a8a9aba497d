package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// sshPackage is the Debian and Ubuntu package that has the ssh client.
const sshPackage = "openssh-client"

// sshOptions are the options smartvm always passes to ssh: a guest's host key is new with
// every VM (and guests are reached at reused addresses), so it is neither checked nor
// remembered.
var sshOptions = []string{"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}

func (a *app) newSSHCmd() *cobra.Command {
	var identity, user string
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND [ARG...]]",
		Short: "Log in to a VM's guest with ssh",
		Long: `Run the system's ssh client against a running VM started with --net: an interactive
login, or COMMAND (put it after --). ssh logs in as root with the private key of the base
image the VM boots (smartvm installed its public half in the image), or with -i KEY. smartvm
exits with ssh's exit code: the command's, or 255 when ssh itself failed.

The guest's host key changes with every VM, so it is not checked and not remembered.`,
		Example: `  smartvm run -d --net --name web
  smartvm ssh web
  smartvm ssh web -- uname -a
  smartvm ssh -l ubuntu -i ~/.ssh/id_ed25519 myvm`,
		Args:              minArgs(1, "a VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.ssh(cmd.Context(), args[0], identity, user, args[1:])
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&identity, "identity", "i", "", "private key to log in with (default: the base image's key)")
	fl.StringVarP(&user, "user", "l", "root", "user to log in as")
	return cmd
}

// ssh runs the ssh client against the VM called name, with this process's stdio, and
// returns its exit code as an exitError.
func (a *app) ssh(ctx context.Context, name, identity, user string, command []string) error {
	if user == "" {
		return usagef("--user needs a user name")
	}
	if strings.HasPrefix(user, "-") || strings.ContainsFunc(user, func(r rune) bool { return r == '@' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return usagef("--user %q: a user name must not start with '-' (ssh would read it as an option) or hold '@', spaces or control characters", user)
	}
	var info smartvm.MachineInfo
	if err := a.withVM(ctx, name, func(m *smartvm.Machine) error {
		info = m.Info()
		return nil
	}); err != nil {
		return err
	}
	args, err := sshArgs(info, identity, user, command)
	if err != nil {
		return err
	}
	bin, err := a.lookPath("ssh")
	if err != nil {
		return fmt.Errorf("ssh client not found in PATH: install it (the package is %s on Debian and Ubuntu)", sshPackage)
	}
	c := exec.Command(bin, args...)
	c.Stdin, c.Stdout, c.Stderr = a.stdin, a.stdout, a.stderr
	// ssh ends the session itself on Ctrl-C, and SIGTERM reaches it as a member of this
	// process group: wait for it rather than kill it when ctx ends.
	err = c.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return &exitError{code: ee.ExitCode()}
	case err != nil:
		return fmt.Errorf("run %s: %w", bin, err)
	}
	return nil
}

// sshArgs builds ssh's arguments for logging in to the VM info describes as user, with the
// key identity (empty: the VM's base image key), running command (empty: a login shell).
func sshArgs(info smartvm.MachineInfo, identity, user string, command []string) ([]string, error) {
	if info.GuestIP == "" {
		return nil, fmt.Errorf("vm %s has no network: start it with --net (smartvm run --net ...)", info.Name)
	}
	key := identity
	if key == "" {
		key = info.SSHKey
		if key == "" {
			return nil, fmt.Errorf("vm %s was not started from a base image, so smartvm has no key for it: pass -i with a private key its guest accepts", info.Name)
		}
		if _, err := os.Stat(key); err != nil {
			return nil, fmt.Errorf("the ssh key of vm %s's base image: %w; pass -i with another key", info.Name, err)
		}
	} else {
		abs, err := filepath.Abs(key)
		if err != nil {
			return nil, fmt.Errorf("-i %s: %w", key, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("-i: %w", err)
		}
		key = abs
	}
	args := append([]string{"-i", key}, sshOptions...)
	args = append(args, user+"@"+info.GuestIP)
	if len(command) > 0 {
		args = append(append(args, "--"), command...)
	}
	return args, nil
}
