package cli

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// smartvmVersion is the module version smartvm was built from ("(devel)" for a source build).
func smartvmVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// versionLine is smartvm's version, the Go release it was built with and its platform.
func versionLine() string {
	return fmt.Sprintf("smartvm %s (%s %s/%s)", smartvmVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func (a *app) newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print smartvm's version and the Firecracker it uses",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(a.stdout, versionLine())
			fc, err := a.findFirecracker()
			switch {
			case errors.Is(err, errNoFirecracker):
				fmt.Fprintln(a.stdout, "firecracker: not found (run 'smartvm setup')")
				return nil
			case err != nil:
				return err
			}
			v, err := smartvm.FirecrackerVersion(cmd.Context(), fc.Path)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "firecracker v%s (%s, from %s)\n", v, fc.Path, fc.From)
			return nil
		},
	}
}
