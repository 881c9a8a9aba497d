package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newAttachCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "attach NAME",
		Short: "Connect this terminal to a running VM's serial console",
		Long: `Connect this terminal to the serial console of a running VM, such as one started with
run --detach: what the guest prints from now on appears here, and what you type goes to the
guest, in raw mode when stdin is a terminal (Ctrl-C included). ` + escapeHelp + ` (Ctrl-], then q)
detaches and leaves the VM running, as do SIGINT and SIGTERM sent to smartvm; Ctrl-] Ctrl-]
sends one Ctrl-] to the guest. attach also ends when the VM does. Press Enter to see the
guest's prompt again; 'smartvm logs NAME' prints what it wrote before.`,
		Args:              exactArgs(1, "one VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withVM(ctx, args[0], func(m *smartvm.Machine) error {
				_, err := a.runConsole(ctx, m, consoleSession{
					banner:     fmt.Sprintf("attached to vm %s", m.Name()),
					escapeDoes: "detaches",
					skip:       consoleSize(m),
				})
				return err
			})
		},
	}
}

// consoleSize is how much the VM has written to its console so far.
func consoleSize(m *smartvm.Machine) int64 {
	st, err := os.Stat(m.ConsolePath())
	if err != nil {
		return 0
	}
	return st.Size()
}
