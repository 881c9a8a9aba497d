//go:build !unix

package baseimage

import (
	"errors"
	"fmt"
	"os"
)

func isRoot() bool { return false }

func checkDirOwner(dir string) error {
	return fmt.Errorf("base image cache %s: %w on this operating system", dir, errors.ErrUnsupported)
}

func allocated(info os.FileInfo) int64 { return info.Size() }
