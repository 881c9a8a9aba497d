//go:build !linux

package safedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

var errUnsupported = fmt.Errorf("safe directory access needs Linux (openat2): %w", errors.ErrUnsupported)

// Dir is a directory held open; on this system none can be.
type Dir struct{ path string }

// Lstat needs Linux.
func (d *Dir) Lstat(string) (Info, error) { return Info{}, errUnsupported }

// Stat needs Linux.
func Stat(*os.File) (Info, error) { return Info{}, errUnsupported }

// UID returns the owner a Dir's entries must have.
func (d *Dir) UID() uint32 { return 0 }

// OpenTrusted needs Linux.
func OpenTrusted(string, bool) (*Dir, error) { return nil, errUnsupported }

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Join returns the path of name inside the directory.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

// Close does nothing.
func (d *Dir) Close() error { return nil }

// OpenDir needs Linux.
func (d *Dir) OpenDir(string) (*Dir, error) { return nil, errUnsupported }

// Mkdir needs Linux.
func (d *Dir) Mkdir(string, fs.FileMode) error { return errUnsupported }

// MkdirAll needs Linux.
func (d *Dir) MkdirAll(string, fs.FileMode) (*Dir, error) { return nil, errUnsupported }

// OpenFile needs Linux.
func (d *Dir) OpenFile(string, int, fs.FileMode) (*os.File, error) { return nil, errUnsupported }

// OpenRegular needs Linux.
func (d *Dir) OpenRegular(string) (*os.File, error) { return nil, errUnsupported }

// ReadFile needs Linux.
func (d *Dir) ReadFile(string, int64) ([]byte, error) { return nil, errUnsupported }

// WriteFileAtomic needs Linux.
func (d *Dir) WriteFileAtomic(string, []byte, fs.FileMode) error { return errUnsupported }

// Remove needs Linux.
func (d *Dir) Remove(string) error { return errUnsupported }

// Rename needs Linux.
func (d *Dir) Rename(string, *Dir, string) error { return errUnsupported }

// RenameNoReplace needs Linux.
func (d *Dir) RenameNoReplace(string, *Dir, string) error { return errUnsupported }

// ReadDir needs Linux.
func (d *Dir) ReadDir(string) ([]fs.DirEntry, error) { return nil, errUnsupported }

// RemoveAll needs Linux.
func (d *Dir) RemoveAll(string) error { return errUnsupported }

// CheckTree needs Linux.
func (d *Dir) CheckTree(string) error { return errUnsupported }

// LockHolder cannot tell on this system.
func LockHolder(*os.File) int { return 0 }

// Chtimes needs Linux.
func (d *Dir) Chtimes(string, time.Time) error { return errUnsupported }

// Lock is an exclusive flock; on this system none can be taken.
type Lock struct{ f *os.File }

// File returns the locked file.
func (l *Lock) File() *os.File { return l.f }

// Unlock releases the lock.
func (l *Lock) Unlock() error { return nil }

// TryLock needs Linux.
func (d *Dir) TryLock(string, bool) (*Lock, bool, error) { return nil, false, errUnsupported }

// Flock needs Linux.
func Flock(*os.File) (bool, error) { return false, errUnsupported }

// OpenInput needs Linux.
func OpenInput(string, bool, bool) (*os.File, error) { return nil, errUnsupported }

// FlockShared needs Linux.
func FlockShared(*os.File) (bool, error) { return false, errUnsupported }

// Chmod needs Linux.
func (d *Dir) Chmod(string, fs.FileMode) error { return errUnsupported }

// WriteFile replaces the file at path with data atomically: a temporary file beside it,
// fsync, rename.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// RemoveAllOwnedBy returns an error wrapping errors.ErrUnsupported.
func (d *Dir) RemoveAllOwnedBy(string, ...uint32) error { return errUnsupported }

// Chown returns an error wrapping errors.ErrUnsupported.
func (d *Dir) Chown(string, uint32, uint32) error { return errUnsupported }

// Link returns an error wrapping errors.ErrUnsupported.
func (d *Dir) Link(*os.File, string) error { return errUnsupported }

// Dev returns 0.
func (d *Dir) Dev() uint64 { return 0 }
