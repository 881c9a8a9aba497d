package cli

import (
	"context"
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
			opts := []smartvm.Option{smartvm.WithStopGracePeriod(timeout)}
			return a.onVMs(cmd.Context(), names, false, opts, func(ctx context.Context, m *smartvm.Machine) error {
				ctx, cancel := context.WithTimeout(ctx, timeout+stopSlack)
				defer cancel()
				return m.Stop(ctx)
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long the guest gets to shut down after Ctrl-Alt-Del")
	return cmd
}
