package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newCloneCmd() *cobra.Command {
	var (
		detach bool
		rm     bool
		count  int
		prefix string
		memory string
	)
	cmd := &cobra.Command{
		Use:   "clone DIR --count N [--name-prefix P] [--detach] [--rm] [--memory-backend file|uffd]",
		Short: "Start many VMs from one snapshot",
		Long: `Start N independent VMs from the snapshot 'smartvm snapshot' saved in DIR, concurrently,
and print their names, one a line. The VMs are named P1, P2, ... (names that are taken are
skipped); P defaults to the snapshot VM's name and "-". The VM the snapshot was taken of may
keep running.

Each clone is restored as 'smartvm restore --name' restores one: its own copies of the
snapshot's drives, its own vsock socket and, with a network, its own network namespace in
which the guest keeps the snapshot's address. A clone whose VM had MMDS finds its name in its
MMDS data, under "smartvm". The clones share the snapshot's memory file: keep DIR until they
have all ended. With --memory-backend uffd a page server serves the clones' page faults from
that file: one for all of them without --detach, one in each clone's supervisor with it.

Without --detach clone waits until every clone has ended; SIGINT and SIGTERM stop them all.
With --detach it returns once they all run, and a supervisor process owns each. If one clone
cannot start, none is left running. As with run, a detached clone that ends is kept as exited
('smartvm ps -a') until 'smartvm rm NAME'; --rm removes it when it ends instead, as the
foreground always does (--rm=false keeps foreground clones too).`,
		Example: `  smartvm snapshot web ./web.snap
  smartvm clone ./web.snap --count 20 --name-prefix worker- -d`,
		Args: exactArgs(1, "a snapshot directory"),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return nil, cobra.ShellCompDirectiveFilterDirs
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if count < 1 {
				return usagef("--count %d: give how many VMs to start, 1 to %d", count, smartvm.MaxClones)
			}
			snap, err := openSnapshot(args[0])
			if err != nil {
				return err
			}
			backend, err := parseMemoryBackend(memory)
			if err != nil {
				return err
			}
			cs := smartvm.CloneSpec{Count: count, NamePrefix: prefix}
			if err := snap.CheckClones(cs); err != nil {
				return err
			}
			fc, err := a.findFirecracker()
			if err != nil {
				return err
			}
			keep := keepExited(cmd, rm, detach)
			if detach {
				return a.cloneDetached(ctx, fc.Path, snap, cs, keep, backend)
			}
			return a.cloneForeground(ctx, fc.Path, snap, cs, keep, backend)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "run the clones in the background and print their names")
	cmd.Flags().IntVarP(&count, "count", "n", 0, "how many VMs to start (required)")
	cmd.Flags().BoolVar(&rm, "rm", false, "remove the VMs when they end (the default in the foreground; detached VMs are kept as exited until 'smartvm rm')")
	addMemoryBackendFlag(cmd, &memory)
	cmd.Flags().StringVar(&prefix, "name-prefix", "", "name the clones PREFIX1, PREFIX2, ... (default: the snapshot VM's name and \"-\")")
	return cmd
}

// cloneForeground starts the clones in this process, prints their names, and waits until they
// have all ended; ctx (SIGINT, SIGTERM) stops them. With keep, they are kept as exited.
func (a *app) cloneForeground(ctx context.Context, fc string, snap smartvm.Snapshot, cs smartvm.CloneSpec, keep bool, backend smartvm.MemoryBackend) error {
	prog := newProgress(a.stderr)
	images, err := a.baseImages(prog)
	if err != nil {
		return err
	}
	plan := runPlan{Snapshot: snap.Dir}
	mgr, err := a.manager(images, append(plan.managerOptions(), smartvm.WithFirecrackerBinary(fc), stopNotifier(a.stderr))...)
	if err != nil {
		return err
	}
	defer mgr.Close()
	var opts []smartvm.StartOption
	if keep {
		opts = append(opts, smartvm.KeepExited())
	}
	if backend != "" {
		opts = append(opts, smartvm.WithMemoryBackend(backend))
	}
	ms, err := mgr.Clone(ctx, snap, cs, opts...)
	prog.finish()
	if err != nil {
		return err
	}
	for _, m := range ms {
		fmt.Fprintln(a.stdout, m.Name())
	}
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			select {
			case <-m.Done():
			case <-ctx.Done():
				errs[i] = stopMachine(ctx, m, stopGrace)
			}
			errs[i] = errors.Join(errs[i], m.Close())
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cloneDetached starts one supervisor per clone, concurrently, and prints the clones' names
// once they all run; if one fails, it kills those that started (and removes their records).
// With keep, they are kept as exited once they end.
func (a *app) cloneDetached(ctx context.Context, fc string, snap smartvm.Snapshot, cs smartvm.CloneSpec, keep bool, backend smartvm.MemoryBackend) error {
	prefix := cs.Prefix(snap)
	var next atomic.Int64
	names := make([]string, cs.Count)
	errs := make([]error, cs.Count)
	var wg sync.WaitGroup
	for i := range names {
		wg.Go(func() {
			for {
				n := next.Add(1)
				plan := runPlan{Snapshot: snap.Dir, RestoreName: prefix + strconv.FormatInt(n, 10), Keep: keep, MemoryBackend: backend}
				names[i], errs[i] = a.spawnSupervisor(ctx, fc, plan)
				if !errors.Is(errs[i], smartvm.ErrExists) || n >= smartvm.MaxCloneNumber || ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		var started []string
		for _, n := range names {
			if n != "" {
				started = append(started, n)
			}
		}
		if len(started) > 0 {
			if kerr := a.removeVMs(context.WithoutCancel(ctx), started, true, "kill", true); kerr != nil {
				err = errors.Join(err, fmt.Errorf("kill the clones that started: %w", kerr))
			}
		}
		return err
	}
	slices.SortFunc(names, func(x, y string) int { return cmp.Or(cmp.Compare(len(x), len(y)), strings.Compare(x, y)) })
	for _, n := range names {
		fmt.Fprintln(a.stdout, n)
	}
	return nil
}
