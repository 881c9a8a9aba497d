//go:build !linux

package rundir

import (
	"errors"
	"fmt"
)

// MakeFIFO needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func MakeFIFO(path string) error {
	return fmt.Errorf("create fifo %s: %w", path, errors.ErrUnsupported)
}
