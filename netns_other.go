//go:build !linux

package smartvm

import (
	"errors"
	"fmt"
	"os"
)

// callerNetns needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func callerNetns() (*os.File, error) {
	return nil, fmt.Errorf("vm networks need Linux: %w", errors.ErrUnsupported)
}

// removeStaleSocket does nothing where no Firecracker runs.
func removeStaleSocket(string) error { return nil }

// openNoFollow opens path for reading.
func openNoFollow(path string) (*os.File, error) { return os.Open(path) }

// fdPath names f by its path where there is no /proc.
func fdPath(f *os.File) string { return f.Name() }
