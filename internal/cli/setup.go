package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm/internal/fcrelease"
)

func (a *app) newSetupCmd() *cobra.Command {
	var version, dir string
	cmd := &cobra.Command{
		Use:   "setup [--version vX.Y.Z] [--dir DIR]",
		Short: "Install a Firecracker release into ~/.smartvm/bin",
		Long: `Install a Firecracker release for this host's architecture.

setup downloads firecracker-<version>-<arch>.tgz from Firecracker's GitHub releases, checks it
against the published .sha256.txt, and installs firecracker and jailer into ~/.smartvm/bin
(or --dir), where smartvm looks after --firecracker-bin and $SMARTVM_FIRECRACKER_BIN. Without
--version it installs the latest release.

$SMARTVM_FIRECRACKER_RELEASE_URL replaces the release site
(` + fcrelease.DefaultURL + `) with a mirror of the same layout:
<url>/download/<tag>/firecracker-<tag>-<arch>.tgz and a <url>/latest that redirects to
.../<tag>.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			prog := newProgress(a.stderr)
			defer prog.finish()
			site, err := a.releaseSite(prog)
			if err != nil {
				return err
			}
			tag := ""
			if version != "" {
				if tag, err = fcrelease.NormalizeTag(version); err != nil {
					return usagef("invalid --version %q: want a release tag such as v1.14.2", version)
				}
			}
			if dir == "" {
				if dir, err = a.binDir(); err != nil {
					return err
				}
			} else if dir, err = filepath.Abs(dir); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			if tag == "" {
				if tag, err = site.Latest(ctx); err != nil {
					return err
				}
			}
			_, err = site.Install(ctx, tag, dir, a.stdout)
			return err
		},
	}
	cmd.Flags().StringVar(&version, "version", "", "release to install, such as v1.14.2 (default: the latest)")
	cmd.Flags().StringVar(&dir, "dir", "", "directory to install into (default: ~/.smartvm/bin)")
	return cmd
}
