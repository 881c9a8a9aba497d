//go:build unix

package baseimage

import (
	"fmt"
	"os"
	"syscall"
)

func isRoot() bool { return os.Geteuid() == 0 }

// checkDirOwner refuses a cache directory that another user could tamper with: it must be a
// real directory (not a symlink), owned by the current user, and not writable by others.
func checkDirOwner(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("inspect cache dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("cache dir %s is not a directory (%s)", dir, st.Mode().Type())
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("inspect cache dir %s: no owner information", dir)
	}
	if int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("cache dir %s is owned by uid %d, not by the current user (uid %d): choose another Dir or fix its owner", dir, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("cache dir %s is writable by group or others (mode %v): chmod go-w it", dir, st.Mode().Perm())
	}
	return nil
}

// allocated is the disk space a file uses (sparse files use less than their size).
func allocated(info os.FileInfo) int64 {
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return info.Size()
}
