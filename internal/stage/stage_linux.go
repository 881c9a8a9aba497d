package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Chunk sizes: ctx is checked before each chunk of a data extent.
const (
	rangeChunk = 64 << 20 // one copy_file_range call at most
	bufChunk   = 1 << 20  // the pread/pwrite buffer
)

// Copy stages src at dst: it creates dst, which must not exist, with mode 0600 and gives it
// src's content and size. It clones src with a reflink (FICLONE) when the filesystem supports
// it, and otherwise copies only src's data extents, leaving holes where src has holes (see
// the package doc). src must be a regular file. dst is not fsynced: a staged drive does not
// outlive its VM.
//
// ctx is checked before the copy and between extents and chunks of them. On any error,
// cancellation included, dst is removed, except when it existed before: then the error wraps
// fs.ErrExist and dst is left alone. A missing src gives an error wrapping fs.ErrNotExist.
func Copy(ctx context.Context, src, dst string) (Result, error) {
	return copyFile(ctx, src, dst, strategy{})
}

// strategy turns off steps of Copy, so that tests and benchmarks reach each way of copying on
// any filesystem. The zero value is Copy's.
type strategy struct {
	noReflink bool // skip FICLONE
	noRange   bool // copy extents with pread and pwrite, not copy_file_range
}

func copyFile(ctx context.Context, src, dst string, s strategy) (res Result, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("stage %s to %s: %w", src, dst, err)
		}
	}()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	// Non-blocking, so that a FIFO (or a device that would block) is refused at once
	// instead of hanging the open.
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return Result{}, &os.PathError{Op: "open", Path: src, Err: err}
	}
	in := os.NewFile(uintptr(fd), src)
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return Result{}, err
	}
	if !st.Mode().IsRegular() {
		return Result{}, fmt.Errorf("source is not a regular file (mode %s): give an image file", st.Mode())
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return Result{}, err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			if rerr := os.Remove(dst); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove partial copy: %w", rerr))
			}
		}
	}()

	if !s.noReflink {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if err == nil {
			return Result{Method: MethodReflink}, nil
		}
		if !cloneUnsupported(err) {
			return Result{}, fmt.Errorf("reflink: %w", err)
		}
	}
	n, err := copySparse(ctx, in, out, st.Size(), !s.noRange)
	if err != nil {
		return Result{}, err
	}
	return Result{Method: MethodSparse, BytesWritten: n}, nil
}

// cloneUnsupported reports whether FICLONE failed because this pair of files cannot share
// blocks (another filesystem, no reflink support, unaligned), rather than for an I/O reason.
func cloneUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

// rangeUnsupported reports whether copy_file_range cannot copy between these files (across
// filesystems, or not implemented), so that pread and pwrite must.
func rangeUnsupported(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, unix.EINVAL)
}

// copySparse copies the data extents of in (size bytes long) to the same offsets in out, then
// sets out's size, and returns the number of bytes copied. It uses copy_file_range when
// useRange is true until that proves unsupported, and pread and pwrite otherwise.
func copySparse(ctx context.Context, in, out *os.File, size int64, useRange bool) (int64, error) {
	c := sparseCopier{in: in, out: out, inFd: int(in.Fd()), outFd: int(out.Fd()), useRange: useRange}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return c.written, err
		}
		start, end, err := c.nextExtent(off, size)
		if err != nil {
			return c.written, err
		}
		if start >= size {
			break // only a hole remains
		}
		if err := c.copyExtent(ctx, start, end); err != nil {
			return c.written, err
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return c.written, err
	}
	return c.written, nil
}

type sparseCopier struct {
	in, out     *os.File
	inFd, outFd int
	useRange    bool   // false once copy_file_range has failed as unsupported
	buf         []byte // for pread/pwrite
	written     int64
}

// nextExtent returns the data extent [start, end) at or after off, or start >= size when
// there is none. A filesystem without SEEK_DATA gives the rest of the file as one extent.
func (c *sparseCopier) nextExtent(off, size int64) (start, end int64, err error) {
	start, err = unix.Seek(c.inFd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL):
		return off, size, nil
	case err != nil:
		return 0, 0, fmt.Errorf("find data in source: %w", err)
	}
	end, err = unix.Seek(c.inFd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, fmt.Errorf("find hole in source: %w", err)
	}
	return start, min(end, size), nil
}

func (c *sparseCopier) copyExtent(ctx context.Context, pos, end int64) error {
	for pos < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		var n int64
		var err error
		if c.useRange {
			n, err = c.copyRange(pos, min(end-pos, rangeChunk))
			if n == 0 && (err == nil || rangeUnsupported(err)) {
				// Not supported here, or no progress (some filesystems report 0 rather
				// than an error): pread and pwrite tell a real end of file apart.
				c.useRange, err = false, nil
			}
		} else {
			n, err = c.copyBuffered(pos, min(end-pos, bufChunk))
		}
		pos += n
		c.written += n
		if err != nil {
			return err
		}
	}
	return nil
}

// copyRange copies up to n bytes at pos with copy_file_range.
func (c *sparseCopier) copyRange(pos, n int64) (int64, error) {
	roff, woff := pos, pos
	done, err := unix.CopyFileRange(c.inFd, &roff, c.outFd, &woff, int(n), 0)
	if err != nil {
		return 0, fmt.Errorf("copy_file_range: %w", err)
	}
	return int64(done), nil
}

// copyBuffered copies n bytes at pos with pread and pwrite.
func (c *sparseCopier) copyBuffered(pos, n int64) (int64, error) {
	if c.buf == nil {
		c.buf = make([]byte, bufChunk)
	}
	b := c.buf[:n]
	if _, err := c.in.ReadAt(b, pos); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("source shrank while being copied: %w", io.ErrUnexpectedEOF)
		}
		return 0, err
	}
	if _, err := c.out.WriteAt(b, pos); err != nil {
		return 0, err
	}
	return n, nil
}
