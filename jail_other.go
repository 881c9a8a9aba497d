//go:build !linux

package smartvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
)

type startJail struct{}

// Jailer reports that the jailer needs Linux.
func (mgr *Manager) Jailer(context.Context) (string, fcapi.Version, error) {
	return "", fcapi.Version{}, fmt.Errorf("%w: the jailer needs Linux: %w", ErrJailer, errors.ErrUnsupported)
}

func (s *starter) prepareJail(context.Context) error {
	return fmt.Errorf("%w: the jailer needs Linux: %w", ErrJailer, errors.ErrUnsupported)
}

func (s *starter) jailConfig(context.Context, *fcapi.VMConfig) error { return errors.ErrUnsupported }

func (s *starter) launchJailed(proc.Config) (*proc.Process, error) { return nil, errors.ErrUnsupported }

func (s *starter) jailRecord() *rundir.Jail { return nil }

func (mgr *Manager) reapJail(context.Context, string, *rundir.State) error { return nil }

func (s *starter) jailSnapshotFiles(context.Context, string, string, bool) (string, string, error) {
	return "", "", errors.ErrUnsupported
}

func (s *starter) mergeIntoJail([]*os.File) (string, error) { return "", errors.ErrUnsupported }

func (s *starter) listenInJail(string) (*net.UnixListener, string, error) {
	return nil, "", errors.ErrUnsupported
}

func (m *Machine) jailSnapshotTargets(stateDst, memDst string) (string, string, func(context.Context) error, error) {
	return stateDst, memDst, func(context.Context) error { return nil }, nil
}

func (m *Machine) lendToJail(string) error { return nil }

type forcedJails struct{}

func (mgr *Manager) killJailed(context.Context, string) (*forcedJails, []int, error) {
	return nil, nil, nil
}

func (fj *forcedJails) remove(context.Context, *Manager) error { return nil }

type warmPool struct{}

type warmJail struct{ stdout, stderr *os.File }

var adoptWarmStep func(step string) // set by tests on Linux

// WarmJails reports that the jailer needs Linux.
func (mgr *Manager) WarmJails(context.Context, MachineSpec, int) error {
	return fmt.Errorf("%w: the jailer needs Linux: %w", ErrJailer, errors.ErrUnsupported)
}

func (mgr *Manager) closeWarm() {}

func (mgr *Manager) refillWarm() {}

func (mgr *Manager) reclaimJailIDs(context.Context) error { return nil }

func (s *starter) holdDriveLocks([]*os.File) error { return errors.ErrUnsupported }
