package cli

import (
	"fmt"
	"os"
	"syscall"
)

// redirectStderr points file descriptor 2 at a new file, path, so that everything this
// process writes to stderr afterwards lands there: its log records, its last error and a Go
// crash report. The file appears under its name only once stderr goes to it.
func redirectStderr(path string) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("redirect stderr: %w", err)
	}
	defer f.Close()
	err = syscall.Dup3(int(f.Fd()), 2, 0)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("redirect stderr to %s: %w", path, err)
	}
	return nil
}
