package cli

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newLogsCmd() *cobra.Command {
	var follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs NAME [-f]",
		Short: "Print a running VM's serial console",
		Long: `Print what a running VM wrote to its serial console so far. With -f, keep printing
what it writes until the VM ends or smartvm is interrupted.

The guest's output is untrusted: control characters a terminal would act on (escape
sequences that move the cursor, retitle the window or make it answer back) are printed as
\xNN escapes. --raw prints the bytes as the guest wrote them.`,
		Args:              exactArgs(1, "one VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var out io.Writer = a.stdout
			if !raw {
				out = &terminalSafe{w: a.stdout}
			}
			return a.withVM(ctx, args[0], func(m *smartvm.Machine) error {
				if !follow {
					f, err := m.ConsoleLog()
					if err != nil {
						return err
					}
					defer f.Close()
					_, err = io.Copy(out, f)
					return err
				}
				con, err := m.Console()
				if err != nil {
					return err
				}
				defer con.Close()
				stop := context.AfterFunc(ctx, func() { con.Close() })
				defer stop()
				_, err = io.Copy(out, con)
				if errors.Is(err, os.ErrClosed) && ctx.Err() != nil {
					return nil // interrupted: the usual way to end -f
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing the console until the VM ends")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the guest's bytes as they are, control characters included")
	return cmd
}
