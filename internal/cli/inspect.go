package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
)

// inspectJSON is what `inspect` prints: the library's description of the VM (spec, state,
// pid, paths including vsock_socket, guest address and network, Firecracker binary and
// version) and Firecracker's live configuration.
type inspectJSON struct {
	smartvm.MachineInfo
	VMConfig fcapi.VMConfig `json:"vm_config"`
}

func (a *app) newInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print a running VM's description and live configuration as JSON",
		Long: `Print a running VM as JSON: its spec, state, pid, paths (vsock_socket is the host side of
its vsock device, if it has one), network and guest address, Firecracker binary and version,
and, as vm_config, the configuration Firecracker reports (GET /vm/config).`,
		Args:              exactArgs(1, "one VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withVM(ctx, args[0], func(m *smartvm.Machine) error {
				if _, err := m.State(ctx); err != nil {
					return err
				}
				cfg, err := m.Client().GetVMConfig(ctx)
				if err != nil {
					return fmt.Errorf("vm %s: %w", m.Name(), err)
				}
				return writeJSON(a.stdout, inspectJSON{MachineInfo: m.Info(), VMConfig: cfg})
			})
		},
	}
}
