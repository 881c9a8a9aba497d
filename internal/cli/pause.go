package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

func (a *app) newPauseCmd() *cobra.Command {
	return a.newVMsCmd("pause NAME...", "Pause running VMs (their vCPUs stop; memory stays)",
		"Pause running VMs: their vCPUs stop and their memory stays. A VM that is paused already\nstays so, and pause says so on stderr.", vmRelease,
		func(ctx context.Context, m *smartvm.Machine) error {
			return a.setPaused(ctx, m, true)
		})
}

// setPaused pauses or resumes m, and says so on stderr instead when it is in that state
// already.
func (a *app) setPaused(ctx context.Context, m *smartvm.Machine, pause bool) error {
	want, verb, do := smartvm.StateRunning, "running", m.Resume
	if pause {
		want, verb, do = smartvm.StatePaused, "paused", m.Pause
	}
	if st, err := m.State(ctx); err == nil && st == want {
		fmt.Fprintf(a.stderr, "vm %s is %s already\n", m.Name(), verb)
		return nil
	}
	return do(ctx)
}
