package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newKillCmd() *cobra.Command {
	return a.newVMsCmd("kill NAME...", "Kill VMs at once (SIGKILL)",
		`Kill VMs at once with SIGKILL. When kill returns, each VM's process, API socket,
staged drives and runtime directory are gone.`, false,
		func(_ context.Context, m *smartvm.Machine) error { return m.Kill() })
}
