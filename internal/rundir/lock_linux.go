package rundir

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// jailServes reports whether a jailed firecracker of VM name may still run: a process started
// with --id name whose root is a chroot <base>/<exec name>/<name>/root. It only ever keeps a
// directory that a corrupt state.json cannot vouch for: nothing is signalled on its word.
func jailServes(name string) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		root, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err != nil || filepath.Base(root) != "root" || filepath.Base(filepath.Dir(root)) != name {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if i := slices.Index(args, "--id"); i >= 0 && i+1 < len(args) && args[i+1] == name {
			return true
		}
	}
	return false
}
