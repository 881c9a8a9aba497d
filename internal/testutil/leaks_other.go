//go:build !linux

package testutil

import (
	"errors"
	"fmt"
)

// children needs /proc; CheckLeaks then checks goroutines only.
func children() ([]child, error) {
	return nil, fmt.Errorf("list child processes: %w", errors.ErrUnsupported)
}
