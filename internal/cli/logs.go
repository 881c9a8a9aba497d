package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newLogsCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME [-f]",
		Short: "Print a running VM's serial console",
		Long: `Print what a running VM wrote to its serial console so far. With -f, keep printing
what it writes until the VM ends or smartvm is interrupted.`,
		Args:              exactArgs(1, "one VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return a.withVM(ctx, args[0], func(m *smartvm.Machine) error {
				if !follow {
					f, err := os.Open(m.ConsolePath())
					if err != nil {
						return fmt.Errorf("console of vm %s: %w", m.Name(), err)
					}
					defer f.Close()
					_, err = io.Copy(a.stdout, f)
					return err
				}
				con, err := m.Console()
				if err != nil {
					return err
				}
				defer con.Close()
				stop := context.AfterFunc(ctx, func() { con.Close() })
				defer stop()
				_, err = io.Copy(a.stdout, con)
				if errors.Is(err, os.ErrClosed) && ctx.Err() != nil {
					return nil // interrupted: the usual way to end -f
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing the console until the VM ends")
	return cmd
}
