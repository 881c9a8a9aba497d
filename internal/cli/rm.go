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
		Short: "Remove exited VMs (-f: kill running ones first)",
		Long: `Remove VMs and everything they left: process, API socket, staged drives and runtime
directory. An exited VM (ps -a) is removed with its record and serial log, which frees its
name; 'smartvm rm $(smartvm ps -aq -f state=exited)' removes them all. A running VM is
removed only with -f, which kills it first (SIGKILL).

A VM whose state.json is corrupt (ps shows it as unknown) is removed with -f too: smartvm
then trusts nothing the file says, and kills the firecracker that serves the VM's API
socket, found by that socket.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.removeVMs(cmd.Context(), names, force, "rm -f", true)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill running VMs, and remove VMs whose state is corrupt")
	return cmd
}

// removeVMs kills (with force) the named VMs and, with remove, removes them, exited ones
// included, all at once, printing each name it handled. A VM whose state is corrupt is
// removed by force (Manager.ForceRemove); without force, a running or corrupt VM is an error
// that names forceCmd. Without remove, a VM kept as exited (KeepExited) keeps its record.
func (a *app) removeVMs(ctx context.Context, names []string, force bool, forceCmd string, remove bool) error {
	mgr, err := a.manager(nil)
	if err != nil {
		return err
	}
	defer mgr.Close()
	return a.eachName(names, func(name string) error { return removeVM(ctx, mgr, name, force, forceCmd, remove) })
}

func removeVM(ctx context.Context, mgr *smartvm.Manager, name string, force bool, forceCmd string, remove bool) error {
	m, err := mgr.Attach(ctx, name)
	switch {
	case errors.Is(err, smartvm.ErrExited) && remove:
		return mgr.Remove(ctx, name)
	case errors.Is(err, smartvm.ErrCorruptState):
		if !force {
			return fmt.Errorf("vm %s: its state.json is corrupt; %s %s removes it, trusting nothing the file says", name, forceCmd, name)
		}
		_, err := mgr.ForceRemove(ctx, name)
		return err
	case errors.Is(err, smartvm.ErrNotFound) && remove:
		// A VM that is ending right now has no live process and no record yet: its owner is
		// recording it as exited. Remove waits for that, then removes the record.
		if rerr := mgr.Remove(ctx, name); !errors.Is(rerr, smartvm.ErrNotFound) {
			return rerr
		}
		return fmt.Errorf("no vm is called %q (see 'smartvm ps -a')", name)
	case err != nil:
		return attachError(name, err)
	}
	if !force {
		return errors.Join(fmt.Errorf("vm %s is running: stop it first, or use %s %s", name, forceCmd, name), m.Release())
	}
	if err := errors.Join(m.Kill(), m.Close()); err != nil || !remove {
		return err
	}
	// A VM kept as exited leaves its record once killed: that goes too.
	if err := mgr.Remove(ctx, name); err != nil && !errors.Is(err, smartvm.ErrNotFound) {
		return err
	}
	return nil
}

func (a *app) newPruneCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "prune",
		Short: "Remove every exited VM",
		Long: `Remove every exited VM (ps -a lists them), printing each name, as
'smartvm rm $(smartvm ps -aq -f state=exited)' does. Running VMs are left alone.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			mgr, err := a.manager(nil)
			if err != nil {
				return err
			}
			defer mgr.Close()
			infos, err := mgr.List(ctx)
			if err != nil {
				return err
			}
			var names []string
			for _, info := range infos {
				if info.State == smartvm.StateExited {
					names = append(names, info.Name)
				}
			}
			return a.eachName(names, func(name string) error { return mgr.Remove(ctx, name) })
		},
	}
}
