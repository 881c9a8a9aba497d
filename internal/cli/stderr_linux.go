package cli

import (
	"fmt"
	"os"
	"syscall"
)

// redirectStderr points file descriptor 2 at the file path (created, appended to), so that
// everything this process writes to stderr afterwards lands there: its log records, its last
// error and a Go crash report.
func redirectStderr(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("redirect stderr: %w", err)
	}
	defer f.Close()
	if err := syscall.Dup3(int(f.Fd()), 2, 0); err != nil {
		return fmt.Errorf("redirect stderr to %s: %w", path, err)
	}
	return nil
}
