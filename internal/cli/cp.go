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
	cmd := &cobra.Command{
		Use:   "cp [-a] --agent-addr ADDR (SRC :DST | :SRC DST)",
		Short: "Copy files and directories into or out of a guest through its agent",
		Long: `Copy a file or a whole directory between this host and a guest, through
smartvm-agent at --agent-addr (unix:PATH or tcp:HOST:PORT). The guest side is written
:PATH, with an absolute PATH; a local path with a colon in it is written ./like:this.

As with cp -a and docker cp, the copy goes into DST when DST is an existing directory, and
otherwise becomes DST, whose directory must exist. Modes, times, symlinks and hard links are
kept. Copies into the guest keep their owners; copies out of it belong to you unless -a
(archive) keeps the guest's owners and setuid/setgid bits. Nothing a guest sends can land
outside DST.`,
		Example: `  smartvm cp --agent-addr unix:/run/agent.sock ./site :/srv/
  smartvm cp --agent-addr unix:/run/agent.sock :/var/log/app.log ./app.log`,
		Args: exactArgs(2, "a source and a destination"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.cp(cmd.Context(), &f, archive, args[0], args[1])
		},
	}
	cmd.Flags().BoolVarP(&archive, "archive", "a", false, "copying out: keep the guest's owners and setuid/setgid bits")
	f.register(cmd)
	return cmd
}

// guestPath splits a cp argument into the guest's path when it is written :PATH.
func guestPath(arg string) (string, bool) {
	if p, ok := strings.CutPrefix(arg, ":"); ok {
		return p, true
	}
	return "", false
}

func (a *app) cp(ctx context.Context, f *agentFlags, archive bool, src, dst string) error {
	gsrc, srcInGuest := guestPath(src)
	gdst, dstInGuest := guestPath(dst)
	switch {
	case src == "" || dst == "":
		return usagef("empty path")
	case srcInGuest == dstInGuest:
		return usagef("write exactly one side as :PATH, the path in the guest")
	case (srcInGuest && gsrc == "") || (dstInGuest && gdst == ""):
		return usagef("the guest path after ':' is empty")
	}
	ag, err := a.agent(ctx, f)
	if err != nil {
		return err
	}
	defer ag.Close()
	if dstInGuest {
		return ag.CopyTo(ctx, src, gdst)
	}
	return ag.CopyFrom(ctx, gsrc, dst, smartvm.CopyOptions{KeepOwner: archive})
}
