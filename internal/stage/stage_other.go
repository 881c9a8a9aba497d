//go:build !linux

package stage

import (
	"context"
	"errors"
	"fmt"
)

// Copy stages src at dst. It needs Linux (FICLONE, SEEK_DATA and copy_file_range); elsewhere it
// returns an error wrapping errors.ErrUnsupported and creates nothing.
func Copy(ctx context.Context, src, dst string) (Result, error) {
	return Result{}, fmt.Errorf("stage %s to %s: %w", src, dst, errors.ErrUnsupported)
}
