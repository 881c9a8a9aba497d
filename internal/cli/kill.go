package cli

import (
	"github.com/spf13/cobra"
)

func (a *app) newKillCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "kill NAME...",
		Short: "Kill VMs at once (SIGKILL)",
		Long: `Kill VMs at once with SIGKILL. When kill returns, each VM's process, API socket,
staged drives and runtime directory are gone; a detached VM started without --rm is kept as
exited (ps -a) until 'smartvm rm'. A VM whose state.json is corrupt is killed
through the firecracker that serves its API socket, as rm -f does.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.removeVMs(cmd.Context(), names, true, "kill", false)
		},
	}
}
