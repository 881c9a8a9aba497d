package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// stopSlack is how long stop waits past --timeout for SIGTERM, SIGKILL and the cleanup.
const stopSlack = 5 * time.Second

func (a *app) newStopCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME... [--timeout 10s]",
		Short: "Stop VMs gracefully: Ctrl-Alt-Del, then SIGTERM, then SIGKILL",
		Long: `Stop VMs gracefully: send Ctrl-Alt-Del, give the guest --timeout to shut down, then
send SIGTERM and finally SIGKILL. When stop returns, each VM's process, API socket, staged
drives and runtime directory are gone.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			if timeout <= 0 {
				return usagef("invalid --timeout %v: want a positive duration such as 10s", timeout)
			}
			// The whole command, attaching and cleaning up included, holds to the timeout and
			// its slack, also when a VM's owner is stopped (SIGSTOP) or hung.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+stopSlack)
			defer cancel()
			opts := []smartvm.Option{smartvm.WithStopGracePeriod(timeout)}
			return a.onVMs(ctx, names, vmDone, opts, func(ctx context.Context, m *smartvm.Machine) error {
				if err := m.Stop(ctx); err != nil && ctx.Err() == nil {
					m.Close()
					return err
				}
				return closeWithin(ctx, m)
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long the guest gets to shut down after Ctrl-Alt-Del")
	return cmd
}

// closeWithin closes m, a VM that has ended, waiting for its owner's cleanup only while ctx
// allows: an owner that is stopped or hung keeps the VM's files until it runs again (or dies,
// and a later command reaps them), but does not hold up the command.
func closeWithin(ctx context.Context, m *smartvm.Machine) error {
	done := make(chan error, 1)
	go func() { done <- m.Close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("vm %s has stopped, but its owner has not removed its files yet (is that process stopped or hung?); they go once it runs again, or with the next smartvm command once it is gone", m.Name())
	}
}
