//go:build !linux

package smartvm

import (
	"errors"
	"fmt"
	"os"
)

// fillFileID leaves key as it is: without the inode and change time, the cache across
// processes is off (openPrivate refuses every file) and only the in-memory one is used.
func fillFileID(*binaryKey, os.FileInfo) {}

// openPrivate refuses: this platform keeps the version cache in memory only.
func openPrivate(path string) (*os.File, error) {
	return nil, fmt.Errorf("version cache %s: %w", path, errors.ErrUnsupported)
}
