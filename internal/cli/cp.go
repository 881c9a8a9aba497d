package cli

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newCpCmd() *cobra.Command {
	var f agentFlags
	var archive bool
	maxMiB := int(smartvm.DefaultCopyMaxBytes >> 20)
	maxFiles := smartvm.DefaultCopyMaxFiles
	cmd := &cobra.Command{
		Use:   "cp [-a] [--max-size SIZE] [--max-files N] [--agent-addr ADDR] (SRC NAME:DST | NAME:SRC DST)",
		Short: "Copy files and directories into or out of a VM through its agent",
		Long: `Copy a file or a whole directory between this host and a guest, through
smartvm-agent: NAME:PATH is PATH in the VM called NAME (started with --agent), with an
absolute PATH. With --agent-addr (unix:PATH or tcp:HOST:PORT), the guest side is written
:PATH. A local path with a colon in it is written ./like:this.

As with cp -a and docker cp, the copy goes into DST when DST is an existing directory, and
otherwise becomes DST, whose directory must exist. Modes, times, symlinks and hard links are
kept. Copies into the guest keep their owners; copies out of it belong to you unless -a
(archive) keeps the guest's owners and setuid/setgid bits. Nothing a guest sends can land
outside DST.

A copy writes at most --max-size bytes of files (16G by default) and --max-files entries
(1048576): a guest cannot fill this host's disk through a copy out of it. A copy past a limit
fails, names it, and removes what it created; raise the limit when that much is expected
(0: no limit). Copies into the guest are bounded the same way there.`,
		Example: `  smartvm cp ./site web:/srv/
  smartvm cp web:/var/log/app.log ./app.log
  smartvm cp --agent-addr unix:/run/agent.sock ./site :/srv/`,
		Args: exactArgs(2, "a source and a destination"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxMiB < 0 || maxFiles < 0 {
				return usagef("--max-size and --max-files must not be negative (0: no limit)")
			}
			opts := smartvm.CopyOptions{KeepOwner: archive, MaxBytes: int64(maxMiB) << 20, MaxFiles: maxFiles}
			if maxMiB == 0 {
				opts.MaxBytes = -1
			}
			if maxFiles == 0 {
				opts.MaxFiles = -1
			}
			return a.cp(cmd.Context(), &f, opts, args[0], args[1])
		},
	}
	cmd.Flags().BoolVarP(&archive, "archive", "a", false, "copying out: keep the guest's owners and setuid/setgid bits (the guest then decides who owns the files on this host, and can leave setuid programs here: only for guests you trust)")
	cmd.Flags().Var(mibFlag{&maxMiB}, "max-size", "the most bytes of files one copy writes (MiB, or 512M, 16G...); 0: no limit")
	cmd.Flags().IntVar(&maxFiles, "max-files", maxFiles, "the most files, directories and links one copy creates; 0: no limit")
	f.register(cmd)
	return cmd
}

// guestPath splits a cp argument written NAME:PATH (or :PATH) into the VM's name and the
// guest path. A local path has no colon before its first slash.
func guestPath(arg string) (name, path string, ok bool) {
	i := strings.IndexByte(arg, ':')
	if i < 0 || strings.Contains(arg[:i], "/") {
		return "", "", false
	}
	return arg[:i], arg[i+1:], true
}

func (a *app) cp(ctx context.Context, f *agentFlags, opts smartvm.CopyOptions, src, dst string) error {
	sname, gsrc, srcInGuest := guestPath(src)
	dname, gdst, dstInGuest := guestPath(dst)
	name := sname + dname
	switch {
	case src == "" || dst == "":
		return usagef("empty path")
	case srcInGuest == dstInGuest:
		return usagef("write exactly one side as NAME:PATH, the path in the VM (:PATH with --agent-addr)")
	case (srcInGuest && gsrc == "") || (dstInGuest && gdst == ""):
		return usagef("the guest path after ':' is empty")
	}
	ag, done, err := a.agent(ctx, f, name)
	if err != nil {
		return err
	}
	defer done()
	if dstInGuest {
		return ag.CopyTo(ctx, src, gdst, opts)
	}
	return ag.CopyFrom(ctx, gsrc, dst, opts)
}
