//go:build !linux

package cli

import (
	"errors"
	"fmt"
	"os"
)

func redirectStderr(f *os.File) error {
	return fmt.Errorf("redirect stderr to %s: %w", f.Name(), errors.ErrUnsupported)
}
