package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newResumeCmd() *cobra.Command {
	return a.newVMsCmd("resume NAME...", "Resume paused VMs", "", vmRelease,
		func(ctx context.Context, m *smartvm.Machine) error { return m.Resume(ctx) })
}
