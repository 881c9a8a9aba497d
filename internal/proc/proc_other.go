//go:build !linux

package proc

import (
	"errors"
	"fmt"
)

// ErrPIDReused reports that the recorded pid now belongs to a different process.
var ErrPIDReused = errors.New("pid belongs to a different process now")

var errNotLinux = fmt.Errorf("firecracker processes need Linux: %w", errors.ErrUnsupported)

// Start is not supported on this system.
func Start(cfg Config) (*Process, error) { return nil, errNotLinux }

// Attach is not supported on this system.
func Attach(pid int, startTime uint64, id *Identity) (*Process, error) { return nil, errNotLinux }

// StartTime is not supported on this system.
func StartTime(pid int) (uint64, error) { return 0, errNotLinux }

// Alive is not supported on this system.
func Alive(pid int, startTime uint64) (bool, error) { return false, errNotLinux }

// Exiting is not supported on this system.
func Exiting(pid int, startTime uint64) (bool, error) { return false, errNotLinux }

// Threads is not supported on this system.
func Threads(pid int) ([]string, error) { return nil, errNotLinux }

// ErrNotOurs reports that a process is not the one smartvm started.
var ErrNotOurs = errors.New("process is not the one smartvm started")

// Identity is what a process smartvm started can be recognised by.
type Identity struct {
	UID         uint32
	Exe         string
	Flag, Value string
}

// ExePath is not supported on this system.
func ExePath(int) (string, error) { return "", errNotLinux }

// Check is not supported on this system.
func Check(int, Identity) error { return errNotLinux }

// FindByArgs is not supported on this system.
func FindByArgs(uint32, string, string) []int { return nil }

// Stopped is not supported on this system.
func Stopped(int) bool { return false }
