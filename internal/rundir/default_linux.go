package rundir

import (
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultPath returns the default runtime root of the calling user: for root,
// /dev/shm/.smartvm/runtime when /dev/shm is a writable tmpfs, else .smartvm/runtime under
// os.TempDir(); for any other user, .smartvm-<uid>/runtime in the same place, so that users
// never share (or fight over) one root.
func DefaultPath() string {
	base := os.TempDir()
	var fs unix.Statfs_t
	if unix.Statfs("/dev/shm", &fs) == nil && fs.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil {
		base = "/dev/shm"
	}
	return filepath.Join(base, userDir(os.Geteuid()), "runtime")
}

// userDir is the directory smartvm keeps uid's files in, inside a shared system directory.
func userDir(uid int) string {
	if uid == 0 {
		return ".smartvm"
	}
	return ".smartvm-" + strconv.Itoa(uid)
}
