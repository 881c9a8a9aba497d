package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] NAME...",
		Short: "Remove VMs (-f: kill running ones first)",
		Long: `Remove VMs and everything they left: process, API socket, staged drives and runtime
directory. A running VM is removed only with -f, which kills it first (SIGKILL).

A VM whose state.json is corrupt (ps shows it as unknown) is removed with -f too: smartvm
then trusts nothing the file says, and kills the firecracker that serves the VM's API
socket, found by that socket.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.removeVMs(cmd.Context(), names, force, "rm -f")
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill running VMs, and remove VMs whose state is corrupt")
	return cmd
}

// removeVMs kills (with force) and removes the named VMs, all at once, printing each name it
// removed. A VM whose state is corrupt is removed by force (Manager.ForceRemove); without
// force, a running or corrupt VM is an error that names forceCmd.
func (a *app) removeVMs(ctx context.Context, names []string, force bool, forceCmd string) error {
	mgr, err := a.manager(nil)
	if err != nil {
		return err
	}
	defer mgr.Close()
	return a.eachName(names, func(name string) error { return removeVM(ctx, mgr, name, force, forceCmd) })
}

func removeVM(ctx context.Context, mgr *smartvm.Manager, name string, force bool, forceCmd string) error {
	m, err := mgr.Attach(ctx, name)
	switch {
	case errors.Is(err, smartvm.ErrCorruptState):
		if !force {
			return fmt.Errorf("vm %s: its state.json is corrupt; %s %s removes it, trusting nothing the file says", name, forceCmd, name)
		}
		_, err := mgr.ForceRemove(ctx, name)
		return err
	case errors.Is(err, smartvm.ErrNotFound):
		return fmt.Errorf("no running vm is called %q (see 'smartvm ps')", name)
	case err != nil:
		return err
	}
	if !force {
		return errors.Join(fmt.Errorf("vm %s is running: stop it first, or use %s %s", name, forceCmd, name), m.Release())
	}
	return errors.Join(m.Kill(), m.Close())
}
