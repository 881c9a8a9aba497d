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
		Short: "Print a VM's serial console",
		Long: `Print what a VM wrote to its serial console so far. With -f, keep printing what it
writes until the VM ends or smartvm is interrupted. For an exited VM (ps -a), print the
serial log kept with it (the last --serial-log-limit of it).

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
			mgr, err := a.manager(nil)
			if err != nil {
				return err
			}
			defer mgr.Close()
			m, err := mgr.Attach(ctx, args[0])
			if errors.Is(err, smartvm.ErrExited) {
				f, err := mgr.ConsoleLog(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(out, f)
				return err
			}
			if err != nil {
				return attachError(args[0], err)
			}
			return errors.Join(func() error {
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
			}(), m.Release())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing the console until the VM ends")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the guest's bytes as they are, control characters included")
	return cmd
}
