package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// resumeTimeout bounds resuming a VM whose snapshot failed, after ctx may have ended.
const resumeTimeout = 5 * time.Second

func (a *app) newSnapshotCmd() *cobra.Command {
	var stop, diff bool
	var baseDir string
	cmd := &cobra.Command{
		Use:   "snapshot NAME DIR [--stop] [--diff --base BASEDIR]",
		Short: "Save a running VM into a directory, to restore it later",
		Long: `Save a running VM into DIR, which must not exist or be empty: its memory, the state of
its devices and copies of its ephemeral drives. The VM is paused while the snapshot is
written (about as long as writing its memory to disk takes), then resumed; a paused VM stays
paused. snapshot prints the directory's absolute path.

With --stop the VM never runs again after the snapshot: it is killed while still paused, so
its persistent drives stay as the snapshot expects them and its name is free for restore.

'smartvm restore DIR' starts the VM again, where it was, under the same name: with a
Firecracker of the same minor release, in the same runtime directory, once the original has
ended. Read-only and persistent drives are not copied: they must be at their paths,
unchanged, when the snapshot is restored.

With --diff --base BASEDIR the memory file holds only the pages the guest wrote since
BASEDIR, the VM's previous snapshot (or the one it was restored from): the VM must have been
started (run --track-dirty-pages) or restored with dirty-page tracking. Restoring a diff
merges its chain onto the full snapshot below it, in the restored VM's own directory: every
snapshot of the chain must stay where it is, unchanged; a changed or missing one is
refused.`,
		Example: `  smartvm snapshot web ./web.snap --stop
  smartvm restore -d ./web.snap
  smartvm snapshot web ./web.diff1 --diff --base ./web.snap`,
		Args:              exactArgs(2, "a VM name and a directory"),
		ValidArgsFunction: a.completeSnapshotArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var base *smartvm.Snapshot
			switch {
			case diff && baseDir == "":
				return usagef("--diff needs --base BASEDIR: the VM's previous snapshot")
			case !diff && baseDir != "":
				return usagef("--base is for --diff snapshots")
			case diff:
				b, err := openSnapshot(baseDir)
				if err != nil {
					return err
				}
				base = &b
			}
			return a.snapshot(cmd.Context(), args[0], args[1], stop, base)
		},
	}
	cmd.Flags().BoolVar(&stop, "stop", false, "end the VM after the snapshot, without letting it run again")
	cmd.Flags().BoolVar(&diff, "diff", false, "save only the memory the guest wrote since --base (needs dirty-page tracking)")
	cmd.Flags().StringVar(&baseDir, "base", "", "with --diff: the VM's previous snapshot `BASEDIR`")
	return cmd
}

// completeSnapshotArgs completes a running VM's name, then a directory.
func (a *app) completeSnapshotArgs(cmd *cobra.Command, args []string, s string) ([]string, cobra.ShellCompDirective) {
	if len(args) == 1 {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	return a.completeOneVMName(cmd, args, s)
}

// snapshot saves the running VM called name into dir and prints the snapshot's directory.
// With stop, it then kills the VM, which it kept paused from before the snapshot on.
func (a *app) snapshot(ctx context.Context, name, dir string, stop bool, base *smartvm.Snapshot) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	mgr, m, err := a.attachVM(ctx, name)
	if err != nil {
		return err
	}
	defer mgr.Close()
	snap, err := takeSnapshot(ctx, m, abs, stop, base)
	if errors.Is(err, smartvm.ErrExists) {
		err = fmt.Errorf("snapshot vm %s: %s is not empty: give a new or empty directory", name, abs)
	}
	if err != nil {
		return errors.Join(err, m.Release())
	}
	fmt.Fprintln(a.stdout, snap.Dir)
	if stop {
		return errors.Join(m.Kill(), m.Close())
	}
	return m.Release()
}

// takeSnapshot saves m into dir. With keepPaused, a running VM is paused first and stays
// paused after the snapshot (the library's Snapshot resumes the VMs it paused itself),
// unless the snapshot fails: then it is resumed.
func takeSnapshot(ctx context.Context, m *smartvm.Machine, dir string, keepPaused bool, base *smartvm.Snapshot) (smartvm.Snapshot, error) {
	save := func() (smartvm.Snapshot, error) {
		if base != nil {
			return m.SnapshotDiff(ctx, dir, *base)
		}
		return m.Snapshot(ctx, dir)
	}
	if !keepPaused {
		return save()
	}
	state, err := m.State(ctx)
	if err != nil {
		return smartvm.Snapshot{}, err
	}
	paused := state == smartvm.StateRunning
	if paused {
		if err := m.Pause(ctx); err != nil {
			return smartvm.Snapshot{}, err
		}
	}
	snap, err := save()
	if err != nil && paused {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
		defer cancel()
		err = errors.Join(err, m.Resume(rctx))
	}
	return snap, err
}
