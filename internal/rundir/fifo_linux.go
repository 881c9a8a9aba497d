package rundir

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MakeFIFO creates a named pipe at path with mode 0600.
func MakeFIFO(path string) error {
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("create fifo %s: %w", path, err)
	}
	return nil
}

// OpenFIFO opens the named pipe at path for reading and writing, in blocking mode and without
// this process's poller, to be handed to a child as its stdin: holding both ends, the child
// never sees end-of-file when writers come and go. Opening never blocks.
func OpenFIFO(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open fifo %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return nil, fmt.Errorf("open fifo %s: not a fifo (mode %#o)", path, st.Mode)
	}
	return os.NewFile(uintptr(fd), path), nil
}
