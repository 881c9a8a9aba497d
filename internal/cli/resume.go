package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newResumeCmd() *cobra.Command {
	return a.newVMsCmd("resume NAME...", "Resume paused VMs",
		"Resume paused VMs. A VM that is running already stays so, and resume says so on stderr.", vmRelease,
		func(ctx context.Context, m *smartvm.Machine) error {
			return a.setPaused(ctx, m, false)
		})
}
