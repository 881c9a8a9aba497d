package rundir

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/proc"
)

// flockNB takes an exclusive flock on f without blocking; ok is false when another open file
// holds it.
func flockNB(f *os.File) (ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if errors.Is(ferr, unix.EWOULDBLOCK) {
		return false, nil
	}
	return ferr == nil, ferr
}

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
