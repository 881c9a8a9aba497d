//go:build !linux

package rundir

import (
	"os"
	"path/filepath"
	"strconv"
)

// DefaultPath returns the default runtime root: .smartvm/runtime under os.TempDir() for root,
// .smartvm-<uid>/runtime for another user (only Linux has the /dev/shm tmpfs smartvm prefers).
func DefaultPath() string {
	dir := ".smartvm"
	if uid := os.Geteuid(); uid > 0 {
		dir += "-" + strconv.Itoa(uid)
	}
	return filepath.Join(os.TempDir(), dir, "runtime")
}
