// Package memfile merges Firecracker diff snapshots' memory files onto their full base, the
// job of Firecracker's snapshot-editor rebase, sparse-aware: only the data of each file is
// read and written, and holes stay holes.
package memfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Extent is a range of a file that holds data: [Off, Off+Len).
type Extent struct{ Off, Len int64 }

// MaxExtents bounds the data extents Extents returns. A memory file is input (a snapshot),
// and one with millions of holes would otherwise cost memory in proportion to them; 2^20
// extents (16 MiB of them) cover a diff of an 8 GiB guest with every other page dirty.
// Merge and Identify walk the extents without keeping them, so the bound is not theirs.
const MaxExtents = 1 << 20

// ErrTooManyExtents reports a file with more than MaxExtents data extents.
var ErrTooManyExtents = errors.New("too many data extents")

// Extents returns the data ranges of f, of size bytes, found with SEEK_DATA and SEEK_HOLE.
// A filesystem that cannot tell reports the whole file as data. A file with more than
// MaxExtents of them gives an error wrapping ErrTooManyExtents: a caller that only reads the
// data may take the whole file as data instead (a hole reads as zeros).
func Extents(f *os.File, size int64) ([]Extent, error) {
	return extents(f, size, MaxExtents)
}

// extents is Extents with the bound limit.
func extents(f *os.File, size int64, limit int) ([]Extent, error) {
	var e []Extent
	err := walk(f, size, func(x Extent) error {
		if len(e) == limit {
			return fmt.Errorf("memory file %s: %w: more than %d ranges of data between holes, more than smartvm keeps of one file; a memory file Firecracker wrote has fewer: take the snapshot again, a full one if it was a diff",
				f.Name(), ErrTooManyExtents, limit)
		}
		e = append(e, x)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// walk calls fn with each data range of f, of size bytes, in order (see Extents), and stops
// at the first error fn returns.
func walk(f *os.File, size int64, fn func(Extent) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			if off > 0 {
				return fmt.Errorf("seek data in %s: %w after offset %d", f.Name(), err, off)
			}
			return fn(Extent{0, size})
		}
		if err != nil {
			return fmt.Errorf("seek data in %s: %w", f.Name(), err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		end = min(end, size)
		if start >= end {
			break
		}
		if err := fn(Extent{start, end - start}); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// MergeInto writes into out, an empty file open for writing, the memory of base with each
// diff in diffs laid over it in order, oldest first: a page a diff holds replaces the page
// below. Every file must be as large as base. The caller closes out (and removes it on
// failure).
func MergeInto(out, base *os.File, diffs []*os.File) error {
	bi, err := base.Stat()
	if err != nil {
		return err
	}
	size := bi.Size()
	for _, d := range diffs {
		di, err := d.Stat()
		if err != nil {
			return err
		}
		if di.Size() != size {
			return fmt.Errorf("diff memory %s has %d bytes, and its base %s %d: not a diff of that base", d.Name(), di.Size(), base.Name(), size)
		}
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, f := range append([]*os.File{base}, diffs...) {
		err := walk(f, size, func(e Extent) error {
			if err := copyRange(out, f, e, buf); err != nil {
				return fmt.Errorf("merge %s: %w", f.Name(), err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return out.Sync()
}

func copyRange(dst, src *os.File, e Extent, buf []byte) error {
	for off := e.Off; off < e.Off+e.Len; {
		n := min(int64(len(buf)), e.Off+e.Len-off)
		if _, err := src.ReadAt(buf[:n], off); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Identity is what identifies a memory file's content: its size, and the SHA-256 of its
// pages, each preceded by its offset (8 bytes, little endian), where only the data is read
// (Identify says which pages count).
type Identity struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// page is the unit of Identity.
const page = 4096

// Identify reads the data of f and returns its identity. For a full memory file (holes
// false) pages of zeros are left out, so that holes and zero pages count the same and a
// sparse file and its full copy share an identity. For a diff (holes true) every page of
// data counts, zeros included: a zero page there overwrites its base, and a hole does not.
func Identify(f *os.File, holes bool) (Identity, error) {
	fi, err := f.Stat()
	if err != nil {
		return Identity{}, err
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var zero [page]byte
	var off [8]byte
	err = walk(f, fi.Size(), func(e Extent) error {
		// Whole pages: an extent's edges may fall inside one.
		start, end := e.Off/page*page, min((e.Off+e.Len+page-1)/page*page, fi.Size())
		for pos := start; pos < end; {
			n := min(int64(len(buf)), end-pos)
			if _, err := f.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("hash %s: %w", f.Name(), err)
			}
			for i := int64(0); i < n; i += page {
				p := buf[i:min(i+page, n)]
				if !holes && bytes.Equal(p, zero[:len(p)]) {
					continue
				}
				binary.LittleEndian.PutUint64(off[:], uint64(pos+i))
				h.Write(off[:])
				h.Write(p)
			}
			pos += n
		}
		return nil
	})
	if err != nil {
		return Identity{}, err
	}
	return Identity{Size: fi.Size(), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
