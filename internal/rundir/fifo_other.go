//go:build !linux

package rundir

import (
	"errors"
	"fmt"
	"os"
)

// MakeFIFO needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func MakeFIFO(path string) error {
	return fmt.Errorf("create fifo %s: %w", path, errors.ErrUnsupported)
}

// OpenFIFO needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func OpenFIFO(path string) (*os.File, error) {
	return nil, fmt.Errorf("open fifo %s: %w", path, errors.ErrUnsupported)
}
