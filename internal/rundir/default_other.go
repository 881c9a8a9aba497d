//go:build !linux

package rundir

import (
	"os"
	"path/filepath"
)

// DefaultPath returns the default runtime root: .smartvm/runtime under os.TempDir() (only
// Linux has the /dev/shm tmpfs smartvm prefers).
func DefaultPath() string {
	return filepath.Join(os.TempDir(), ".smartvm", "runtime")
}
