//go:build !linux

package logcap

import (
	"errors"
	"fmt"
	"os"
)

// Trim needs Linux: it returns an error wrapping errors.ErrUnsupported.
func Trim(f *os.File, _ int64) (int64, error) {
	return 0, fmt.Errorf("trim %s: %w", f.Name(), errors.ErrUnsupported)
}

// DataStart returns off: without Trim there are no holes to skip.
func DataStart(_ *os.File, off int64) int64 { return off }
