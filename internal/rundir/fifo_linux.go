package rundir

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// MakeFIFO creates a named pipe at path with mode 0600.
func MakeFIFO(path string) error {
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("create fifo %s: %w", path, err)
	}
	return nil
}
