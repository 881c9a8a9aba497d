package logcap

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pageSize is the granularity of punched holes: filesystems free whole blocks.
const pageSize = 4096

// Trim releases the space of f's contents before its last limit bytes (rounded to whole
// pages, so up to limit+4095 bytes stay), and returns the offset where the kept data starts;
// 0 when f is not above limit. f must be open for writing. Trimming again is cheap: the part
// already released stays a hole.
func Trim(f *os.File, limit int64) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", f.Name(), err)
	}
	end := (fi.Size() - limit) &^ (pageSize - 1)
	if end <= 0 {
		return 0, nil
	}
	var ferr error
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", f.Name(), err)
	}
	if err := rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, end)
	}); err != nil {
		return 0, fmt.Errorf("trim %s: %w", f.Name(), err)
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) {
		return 0, fmt.Errorf("trim %s: the filesystem cannot punch holes: %w", f.Name(), errors.ErrUnsupported)
	}
	if ferr != nil {
		return 0, fmt.Errorf("trim %s: %w", f.Name(), ferr)
	}
	return end, nil
}

// DataStart returns the first offset at or after off that holds data (not a hole Trim left);
// off itself when it holds data, when there is no data after it, or when the filesystem
// cannot tell. It does not move f's offset for ReadAt users (pread ignores it).
func DataStart(f *os.File, off int64) int64 {
	rc, err := f.SyscallConn()
	if err != nil {
		return off
	}
	next := off
	_ = rc.Control(func(fd uintptr) {
		if n, err := unix.Seek(int(fd), off, unix.SEEK_DATA); err == nil && n > off {
			next = n
		}
	})
	return next
}
