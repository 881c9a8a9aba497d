package cli

import (
	"fmt"
	"os"
	"syscall"
)

// redirectStderr points file descriptor 2 at f, so that everything this process writes to
// stderr afterwards lands there: its log records, its last error and a Go crash report.
func redirectStderr(f *os.File) error {
	if err := syscall.Dup3(int(f.Fd()), 2, 0); err != nil {
		return fmt.Errorf("redirect stderr to %s: %w", f.Name(), err)
	}
	return nil
}
