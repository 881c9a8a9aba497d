package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
)

func (a *app) newRestoreCmd() *cobra.Command {
	var detach, waitAgent, rm bool
	var name, memory string
	cmd := &cobra.Command{
		Use:   "restore DIR [--name NAME] [--detach] [--rm] [--wait-agent] [--memory-backend file|uffd]",
		Short: "Start a VM again from a snapshot",
		Long: `Start the VM that 'smartvm snapshot' saved in DIR again, under the name it had, or with
--name as a new, independent VM (a clone: see 'smartvm clone'). As with run, its serial
console is attached to this terminal (` + escapeHelp + ` stops the VM, as do SIGINT and SIGTERM), or
with --detach restore returns once the VM runs and prints its name, and a supervisor process
owns the VM. As with run, a detached VM that ends is kept as exited ('smartvm ps -a') until
'smartvm rm NAME'; --rm removes it when it ends instead, as a foreground restore always does
(--rm=false keeps a foreground VM too).

A snapshot loads only:
  - with a Firecracker of the release that wrote it (the same major and minor version),
    found as run finds one (--firecracker-bin, $SMARTVM_FIRECRACKER_BIN,
    ~/.smartvm/bin/firecracker, PATH) but never installed;
  - in the runtime directory it was taken in, when it holds ephemeral drives;
  - under its own name, while no VM runs under that name: stop the original first, take
    the snapshot with --stop, or restore with --name.

Under another name (--name) the VM gets its own copies of the snapshot's drives, its own
vsock socket and, with a network, its own network namespace, in which the guest keeps the
snapshot's address; the VM the snapshot was taken of may keep running. This needs root.
The guest's clock wakes at the time of the snapshot ('smartvm inspect' shows it as
snapshot_taken) until something in the guest sets it.

The restored VM reads its memory from DIR: keep DIR until the VM has ended. Restoring leaves
DIR as it was, so it can be restored again.

A guest agent notices the restore (its vsock connections reset), listens again and calls the
host for its clock, so a clone does not run on the snapshot's time. --wait-agent returns (or
attaches the console) only once it has: then the clone's clock is right and it takes
commands (smartvm exec). The library does the same with Machine.WaitAgent after Restore.`,
		Example: `  smartvm snapshot web ./web.snap --stop
  smartvm restore ./web.snap
  smartvm restore -d ./web.snap
  smartvm restore -d --name web2 ./web.snap`,
		Args: exactArgs(1, "a snapshot directory"),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return nil, cobra.ShellCompDirectiveFilterDirs
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			snap, err := openSnapshot(args[0])
			if err != nil {
				return err
			}
			fc, err := a.findFirecracker()
			if err != nil {
				return err
			}
			backend, err := parseMemoryBackend(memory)
			if err != nil {
				return err
			}
			plan := runPlan{Snapshot: snap.Dir, WaitAgent: waitAgent, RestoreName: name, MemoryBackend: backend}
			plan.Keep = keepExited(cmd, rm, detach)
			if detach {
				return a.startDetached(ctx, fc.Path, plan)
			}
			return a.runForeground(ctx, fc.Path, plan, nil)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run in the background and print the VM's name")
	cmd.Flags().BoolVar(&waitAgent, "wait-agent", false, "return (or attach the console) only once the guest agent is back, with the host's clock, within "+agentReadyTimeout.String())
	cmd.Flags().StringVar(&name, "name", "", "restore as a new VM of this name (default: the snapshot's VM)")
	addMemoryBackendFlag(cmd, &memory)
	cmd.Flags().BoolVar(&rm, "rm", false, "remove the VM when it ends (the default in the foreground; a detached VM is kept as exited until 'smartvm rm')")
	return cmd
}

// openSnapshot reads the snapshot in dir, with errors that say what dir is instead.
func openSnapshot(dir string) (smartvm.Snapshot, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return smartvm.Snapshot{}, fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	switch st, err := os.Stat(abs); {
	case errors.Is(err, fs.ErrNotExist):
		return smartvm.Snapshot{}, fmt.Errorf("snapshot directory %s does not exist", abs)
	case err != nil:
		return smartvm.Snapshot{}, fmt.Errorf("snapshot directory %s: %w", abs, err)
	case !st.IsDir():
		return smartvm.Snapshot{}, fmt.Errorf("%s is not a snapshot: a snapshot is the directory 'smartvm snapshot NAME DIR' wrote", abs)
	}
	snap, err := smartvm.OpenSnapshot(abs)
	if errors.Is(err, smartvm.ErrNotFound) {
		return snap, fmt.Errorf("%s is not a snapshot: it has no manifest.json (give the directory 'smartvm snapshot NAME DIR' wrote)", abs)
	}
	return snap, err
}

// addMemoryBackendFlag adds restore's and clone's --memory-backend.
func addMemoryBackendFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "memory-backend", "", "how the VM gets its memory from the snapshot: file (Firecracker maps the memory file; the default) or uffd (a userfaultfd page server in the process that owns the VM serves its page faults)")
	cmd.RegisterFlagCompletionFunc("memory-backend", cobra.FixedCompletions([]string{"file", "uffd"}, cobra.ShellCompDirectiveNoFileComp))
}

// parseMemoryBackend reads --memory-backend: file or uffd, in any case; empty is the default.
func parseMemoryBackend(s string) (smartvm.MemoryBackend, error) {
	switch strings.ToLower(s) {
	case "":
		return "", nil
	case "file":
		return smartvm.MemoryFile, nil
	case "uffd":
		return smartvm.MemoryUffd, nil
	}
	return "", usagef("invalid --memory-backend %q: want file or uffd", s)
}

// restoreVM restores the VM saved in dir, under name (empty: the snapshot's), with its serial
// input connected (a snapshot taken without one gets one, as every VM run starts does).
func restoreVM(ctx context.Context, mgr *smartvm.Manager, dir, name string, opts ...smartvm.StartOption) (*smartvm.Machine, error) {
	snap, err := openSnapshot(dir)
	if err != nil {
		return nil, err
	}
	snap.Spec.SerialInput = true
	m, err := mgr.Restore(ctx, snap, smartvm.RestoreSpec{Name: name}, opts...)
	var se *smartvm.StartError
	switch {
	case err == nil:
		return m, nil
	case errors.Is(err, smartvm.ErrExited):
		n := cmp.Or(name, snap.Name)
		return nil, fmt.Errorf("the name %q is taken by a vm that exited; remove it with smartvm rm %s, or restore under another --name: %w", n, n, err)
	case errors.Is(err, smartvm.ErrExists) && name != "":
		return nil, fmt.Errorf("a vm called %q is already running: choose another --name: %w", name, smartvm.ErrExists)
	case errors.Is(err, smartvm.ErrExists):
		return nil, fmt.Errorf("vm %s is still running, and a snapshot is restored under the name it was taken with: stop it first ('smartvm stop %s'), take the snapshot with --stop, or restore it under another --name: %w",
			snap.Name, snap.Name, smartvm.ErrExists)
	case errors.Is(err, errors.ErrUnsupported) && errors.As(err, &se) && se.Step == "check the snapshot":
		return nil, snapshotReleaseHint(err, snap)
	case errors.Is(err, smartvm.ErrOtherRuntimeRoot):
		return nil, fmt.Errorf("%w; choose that runtime root with --runtime-dir or $%s", err, envRuntimeDir)
	}
	return nil, err
}

// snapshotReleaseHint adds to err, a snapshot the binary cannot load, how to get one that can.
func snapshotReleaseHint(err error, snap smartvm.Snapshot) error {
	var ue *fcapi.UnsupportedError
	if errors.As(err, &ue) {
		return fmt.Errorf("%w; point --firecracker-bin or $%s at Firecracker %s or newer", err, envFirecrackerBin, ue.Since)
	}
	want := snap.FirecrackerVersion
	if v, perr := fcapi.ParseVersion(want); perr == nil {
		want = fmt.Sprintf("v%d.%d.x", v.Major, v.Minor)
	}
	return fmt.Errorf("%w; point --firecracker-bin or $%s at a Firecracker %s ('smartvm setup --version vX.Y.Z --dir DIR' installs one)",
		err, envFirecrackerBin, want)
}
