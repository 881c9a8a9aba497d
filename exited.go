package smartvm

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/smartvm/smartvm/internal/logcap"
	"github.com/smartvm/smartvm/internal/rundir"
)

// exitedError is Attach's error for VM name, kept as exited.
func exitedError(name string, e *rundir.Exit) error {
	return fmt.Errorf("attach vm %s: %w (%s, at %s): %w", name, ErrExited, e.Reason, e.At.Format(time.RFC3339), ErrNotRunning)
}

// Info describes VM name: a live one with its state as Firecracker reports it (as List
// does), or one kept as exited (KeepExited), with StateExited and Exit. A dead VM is reaped
// first. It returns an error wrapping ErrNotFound when no VM has the name (or it is still
// starting, or the name is a warm jail's), and ErrCorruptState when its state.json cannot be read.
func (mgr *Manager) Info(ctx context.Context, name string) (MachineInfo, error) {
	if err := warmName(name); err != nil {
		return MachineInfo{}, err
	}
	dir, st, err := mgr.root.Lookup(name)
	if err == nil && st.Exit == nil && !st.Alive() {
		if _, err := dir.Reap(ctx); err != nil {
			mgr.log.Warn("reap dead vm", "vm", name, "err", err)
		}
		_, st, err = mgr.root.Lookup(name)
	}
	switch {
	case err != nil:
		return MachineInfo{}, fmt.Errorf("vm %s: %w", name, err)
	case st.Exit != nil:
		return mgr.recordedInfo(st), nil
	case !st.Alive():
		return MachineInfo{}, fmt.Errorf("vm %s: its process is gone: %w", name, ErrNotFound)
	}
	return mgr.liveInfo(ctx, st), nil
}

// Remove removes the record of VM name, kept as exited (KeepExited), which frees its name; a
// kept VM that has ended but is not recorded yet is recorded first. It returns an error
// wrapping ErrNotFound when no VM has the name (a warm jail is none), ErrExists when the VM
// runs (stop or kill it first), and ErrCorruptState when its state.json cannot be read while
// a firecracker still serves the VM (ForceRemove removes it).
func (mgr *Manager) Remove(ctx context.Context, name string) error {
	if err := warmName(name); err != nil {
		return fmt.Errorf("remove %w", err)
	}
	if m, err := mgr.lookup(name); err != nil {
		return err
	} else if m != nil && !m.waitFor(ctx, 0) { // one ending now is forgotten as it ends
		return fmt.Errorf("remove vm %s: this manager runs it: stop it first: %w", name, ErrExists)
	}
	if err := mgr.root.RemoveExited(ctx, name); err != nil {
		return err
	}
	mgr.log.Info("removed exited vm", "vm", name)
	return nil
}

// ConsoleLog returns what VM name's guest wrote to its serial console, from the oldest byte
// kept (see WithSerialLogLimit): of a live VM, or of one kept as exited (KeepExited). It reads
// the file through the VM's directory (a regular file of smartvm's, never a link), at most
// the manager's serial log limit from its end. Close it when done. It returns an error
// wrapping ErrNotFound when no VM has the name (a warm jail is none).
func (mgr *Manager) ConsoleLog(name string) (io.ReadCloser, error) {
	if err := warmName(name); err != nil {
		return nil, fmt.Errorf("console of %w", err)
	}
	dir, _, err := mgr.root.Lookup(name)
	if dir == nil {
		return nil, fmt.Errorf("console of vm %s: %w", name, err)
	}
	f, err := dir.OpenFile(rundir.SerialFile)
	if err != nil {
		return nil, fmt.Errorf("console of vm %s: %w", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("console of vm %s: %w", name, err)
	}
	off := logcap.DataStart(f, 0)
	if limit := mgr.serialMax; limit > 0 {
		off = max(off, fi.Size()-limit)
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("console of vm %s: %w", name, err)
	}
	return readCloser{io.LimitReader(f, fi.Size()-off), f}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
