package safedir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// ErrUntrusted reports a path or file that another user could have planted or redirected: a
// symlink, a foreign owner, a directory others can write, a FIFO where a file belongs.
var ErrUntrusted = errors.New("untrusted path")

// ErrCrossDevice reports a hard link asked for across filesystems.
var ErrCrossDevice = errors.New("on another filesystem")

// TrustError reports a directory on the way to a trusted one that smartvm must not use.
type TrustError struct {
	// Path is the offending directory (or link).
	Path string
	// Problem says what is wrong with it.
	Problem string
}

func (e *TrustError) Error() string { return e.Path + " " + e.Problem }

// Is makes errors.Is(err, ErrUntrusted) true.
func (e *TrustError) Is(target error) bool { return target == ErrUntrusted }

// Info describes a file as Dir.Lstat found it.
type Info struct {
	Mode    fs.FileMode
	UID     uint32
	GID     uint32
	Size    int64
	Blocks  int64 // 512-byte blocks allocated
	Dev     uint64
	Ino     uint64
	ModTime time.Time
}

// LockOf wraps f, on which the caller holds a flock, as a Lock.
func LockOf(f *os.File) *Lock { return &Lock{f: f} }

// ReadInput reads the regular file at path, a file the caller gives (OpenInput: opened without
// blocking, so a FIFO is refused rather than waited on). It reads at most limit+1 bytes: more
// than limit means the file is too large, which the caller reports as fits its file.
func ReadInput(path string, limit int64) ([]byte, error) {
	f, err := OpenInput(path, false, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
