//go:build !linux

package cli

import (
	"errors"
	"fmt"
)

type fsInfo struct {
	kind     string
	tmpfs    bool
	reflinks bool
	free     int64
}

func statFS(dir string) (fsInfo, error) {
	return fsInfo{}, fmt.Errorf("statfs %s: %w", dir, errors.ErrUnsupported)
}
