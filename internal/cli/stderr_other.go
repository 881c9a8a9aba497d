//go:build !linux

package cli

import (
	"errors"
	"fmt"
)

func redirectStderr(path string) error {
	return fmt.Errorf("redirect stderr to %s: %w", path, errors.ErrUnsupported)
}
