package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newPauseCmd() *cobra.Command {
	return a.newVMsCmd("pause NAME...", "Pause running VMs (their vCPUs stop; memory stays)", "", vmRelease,
		func(ctx context.Context, m *smartvm.Machine) error { return m.Pause(ctx) })
}
