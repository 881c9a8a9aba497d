package smartvm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// removeStaleSocket removes the Unix socket at path when nothing listens on it any more (it
// was a dead Firecracker's), and leaves anything else there alone: another type of file, a
// socket of another user, one something still listens on. The check and the removal act on
// the same directory, held open, so a rename in between cannot redirect the removal.
func removeStaleSocket(path string) error {
	dfd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stale socket %s: %w", path, err)
	}
	defer unix.Close(dfd)
	base := filepath.Base(path)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stale socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != uint32(os.Geteuid()) {
		return nil
	}
	// Connect through the held directory, so the name is the one just checked.
	c, err := net.DialTimeout("unix", "/proc/self/fd/"+strconv.Itoa(dfd)+"/"+base, time.Second)
	if err == nil {
		c.Close()
		return nil // someone listens: not stale
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	if err := unix.Unlinkat(dfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("stale socket %s: %w", path, err)
	}
	return nil
}
