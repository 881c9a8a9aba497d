//go:build !linux

package jailer

import (
	"errors"
	"fmt"

	"github.com/smartvm/smartvm/internal/proc"
)

var errUnsupported = fmt.Errorf("the jailer needs Linux: %w", errors.ErrUnsupported)

// ErrJailerFailed reports that the jailer exited with an error before starting firecracker.
var ErrJailerFailed = errors.New("jailer failed")

// Guard is Linux-only.
type Guard struct{}

// StartGuard returns an error wrapping errors.ErrUnsupported.
func StartGuard(bool) (*Guard, error) { return nil, errUnsupported }

// KillGuard returns an error wrapping errors.ErrUnsupported.
func KillGuard(int, uint64) error { return errUnsupported }

// Jail is Linux-only.
type Jail struct {
	Config      Config
	Guard       *Guard
	Firecracker *proc.Process
	Jailer      proc.Status
}

// Launch returns an error wrapping errors.ErrUnsupported.
func Launch(string, Config, proc.Config) (*Jail, error) { return nil, errUnsupported }

// Close does nothing.
func (j *Jail) Close() error { return nil }

// DetectCgroups returns an error wrapping errors.ErrUnsupported: cgroups are Linux's.
func DetectCgroups() (Layout, error) { return Layout{}, errUnsupported }
