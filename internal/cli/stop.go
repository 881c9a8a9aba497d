package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// stopSlack is how long stop waits past --timeout for SIGTERM, SIGKILL and the cleanup.
const stopSlack = 5 * time.Second

// stopGrace is how long the guest gets to shut down after Ctrl-Alt-Del: the default of stop
// --timeout, and the grace of a foreground VM's escape sequence and signals and of a detached
// VM's supervisor.
const stopGrace = smartvm.DefaultStopGracePeriod

// graceFlag is a grace period flag: a Go duration (10s, 1m30s) or, as docker's stop -t, a
// number of seconds; 0 means none.
type graceFlag struct{ v *time.Duration }

func (f graceFlag) String() string {
	if f.v == nil {
		return "0s"
	}
	return f.v.String()
}

func (f graceFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if nerr != nil {
			return fmt.Errorf("want a duration such as 10s or a number of seconds")
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return fmt.Errorf("want 0 or more")
	}
	*f.v = d
	return nil
}

func (graceFlag) Type() string { return "duration" }

// stopNotifier is the option that tells the user on w when a stop escalates to a signal.
func stopNotifier(w io.Writer) smartvm.Option {
	var mu sync.Mutex
	return smartvm.WithStopNotify(func(e smartvm.StopEscalation) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "vm %s: %s\n", e.VM, e)
	})
}

func (a *app) newStopCmd() *cobra.Command {
	timeout := stopGrace
	cmd := &cobra.Command{
		Use:   "stop NAME... [-t 10s]",
		Short: "Stop VMs gracefully: Ctrl-Alt-Del, then SIGTERM, then SIGKILL",
		Long: `Stop VMs gracefully: send Ctrl-Alt-Del, give the guest --timeout to shut down, then
send SIGTERM and finally SIGKILL, saying so on stderr when it comes to a signal. -t 0 gives
no grace period: SIGTERM at once. The same grace period (` + stopGrace.String() + `) applies when a
foreground VM is stopped with ` + escapeHelp + ` or a signal, and is the library's default
(smartvm.DefaultStopGracePeriod). When stop returns, each VM's process, API socket, staged
drives and runtime directory are gone.`,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			// The whole command, attaching and cleaning up included, holds to the timeout and
			// its slack, also when a VM's owner is stopped (SIGSTOP) or hung.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+stopSlack)
			defer cancel()
			opts := []smartvm.Option{smartvm.WithStopGracePeriod(timeout), stopNotifier(a.stderr)}
			return a.onVMs(ctx, names, vmDone, opts, func(ctx context.Context, m *smartvm.Machine) error {
				if err := m.Stop(ctx); err != nil && ctx.Err() == nil {
					m.Close()
					return err
				}
				return closeWithin(ctx, m)
			})
		},
	}
	cmd.Flags().VarP(graceFlag{&timeout}, "timeout", "t", "how long the guest gets to shut down after Ctrl-Alt-Del: a duration (10s) or seconds (10); 0: none, SIGTERM at once")
	return cmd
}

// closeWithin closes m, a VM that has ended, waiting for its owner's cleanup only while ctx
// allows: an owner that is stopped or hung keeps the VM's files until it runs again (or dies,
// and a later command reaps them), but does not hold up the command.
func closeWithin(ctx context.Context, m *smartvm.Machine) error {
	done := make(chan error, 1)
	go func() { done <- m.Close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("vm %s has stopped, but its owner has not removed its files yet (is that process stopped or hung?); they go once it runs again, or with the next smartvm command once it is gone", m.Name())
	}
}
