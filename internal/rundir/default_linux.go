package rundir

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultPath returns the default runtime root: /dev/shm/.smartvm/runtime when /dev/shm is a
// writable tmpfs, else .smartvm/runtime under os.TempDir().
func DefaultPath() string {
	var fs unix.Statfs_t
	if unix.Statfs("/dev/shm", &fs) == nil && fs.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil {
		return "/dev/shm/.smartvm/runtime"
	}
	return filepath.Join(os.TempDir(), ".smartvm", "runtime")
}
