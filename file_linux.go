package smartvm

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openNoFollow opens path for reading without following a final symlink and without blocking
// on a FIFO.
func openNoFollow(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// fdPath names the file f has open, for a function that takes a path: opening it opens that
// very file, whatever happens to f's name meanwhile.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }
