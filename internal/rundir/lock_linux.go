package rundir

import (
	"context"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/proc"
)

// killServing sends SIGKILL to those of pids that match id, through pidfds, and waits, while ctx allows, for them to end. It
// returns the pids it signalled.
func killServing(ctx context.Context, pids []int, id proc.Identity) []int {
	var killed []int
	for _, pid := range pids {
		st, err := proc.StartTime(pid)
		if err != nil {
			continue
		}
		p, err := proc.Attach(pid, st, &id) // the pidfd pins it: checked again, for the process it names
		if err != nil {
			continue
		}
		if p.Signal(syscall.SIGKILL) == nil {
			killed = append(killed, pid)
		}
		select {
		case <-p.Done():
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		p.Release()
	}
	return killed
}

// jailServes reports whether a jailed firecracker of VM name may still run (jailer.Running).
// It only ever keeps a directory that a corrupt state.json cannot vouch for: nothing is
// signalled on its word.
func jailServes(name string) bool { return jailer.Running(name) }
