// Package treetar writes a file or directory tree as a tar stream and extracts one under a
// directory, keeping mode, ownership and modification times. The agent and the host use it for
// copies in both directions.
//
// Extraction treats the stream as hostile: every entry is created through an os.Root opened on
// the destination, so no entry name, symlink or hard link can reach outside it, and entries
// with absolute names or ".." elements are refused outright.
package treetar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// copyBuf is the buffer size file contents are copied with.
const copyBuf = 1 << 20

// Write writes the tree at src (a file, symlink or directory, not followed if a symlink) to w
// as a tar stream whose entries are named name, name/child, and so on. Regular files with
// several links inside the tree become hard links. Device files, FIFOs and sockets are refused.
func Write(w io.Writer, src, name string) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	buf := make([]byte, copyBuf)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		entry := path.Join(name, filepath.ToSlash(rel))
		return writeEntry(tw, p, entry, links, buf)
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write tar: %w", err)
	}
	return nil
}

func writeEntry(tw *tar.Writer, p, entry string, links map[[2]uint64]string, buf []byte) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	var target string
	switch fi.Mode().Type() {
	case 0, fs.ModeDir:
	case fs.ModeSymlink:
		if target, err = os.Readlink(p); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: %s files are not copied (only files, directories and symlinks)", p, fileKind(fi.Mode()))
	}
	hdr, err := tar.FileInfoHeader(fi, target)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	hdr.Name = entry
	hdr.Uname, hdr.Gname = "", ""
	hdr.Format = tar.FormatPAX
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, seen := links[key]; seen {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			links[key] = entry
		}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar: %w", err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyBuffer(tw, io.LimitReader(f, hdr.Size), buf)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("%s: changed size while being copied", p)
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special"
}

// Options tune Extract.
type Options struct {
	// Owner sets each entry's uid and gid from the stream and keeps setuid and setgid bits.
	// Without it, entries belong to the extracting process and those bits are dropped.
	Owner bool
	// Prefix, when set, is the one top-level name the stream may hold: every entry must be
	// Prefix or beneath it, and a hard link may only point at an entry this extraction
	// created. A stream from an untrusted writer (a guest) extracted into an existing
	// directory then cannot replace, chmod or link anything else there.
	Prefix string
	// MaxBytes, when positive, is the most bytes of file contents the stream may hold in all
	// (a file's size counts before any of it is written), and MaxEntries, when positive, the
	// most entries. A stream past either ends the extraction with a *LimitError: a writer
	// that is not trusted (a guest) cannot fill the disk or its inodes.
	MaxBytes   int64
	MaxEntries int
}

// LimitError is the error of an extraction that went past Options.MaxBytes or MaxEntries.
type LimitError struct {
	// Entry is the entry that would have gone past the limit.
	Entry string
	// Bytes is set for MaxBytes, else the limit is MaxEntries; Limit is its value.
	Bytes bool
	Limit int64
}

func (e *LimitError) Error() string {
	if e.Bytes {
		return fmt.Sprintf("tar entry %q: the stream holds more than %d bytes of files, the limit", e.Entry, e.Limit)
	}
	return fmt.Sprintf("tar entry %q: the stream holds more than %d entries, the limit", e.Entry, e.Limit)
}

// Extract creates the entries of the tar stream r under the existing directory dir and returns
// how many it created. Existing files are replaced; existing directories are kept and take
// the entry's mode and times.
func Extract(r io.Reader, dir string, opts Options) (int, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	buf := make([]byte, copyBuf)
	type dirTimes struct {
		name  string
		mtime time.Time
	}
	var dirs []dirTimes
	created := map[string]bool{}
	symlinks := map[string]bool{} // the symlinks this stream created
	n := 0
	var total int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read tar: %w", err)
		}
		name, err := CheckName(hdr.Name)
		if err != nil {
			return n, err
		}
		if err := opts.checkPrefix(name); err != nil {
			return n, err
		}
		// os.Root follows symlinks inside dir: a symlink of this stream's would take the
		// entries under it anywhere in dir, past Prefix.
		if err := checkNotThrough(symlinks, name); err != nil {
			return n, err
		}
		if hdr.Typeflag == tar.TypeLink {
			target, err := CheckName(hdr.Linkname)
			if err != nil {
				return n, err
			}
			if err := checkNotThrough(symlinks, target); err != nil {
				return n, err
			}
			if opts.Prefix != "" && !created[target] {
				return n, fmt.Errorf("tar entry %q: a hard link to %q, which this stream did not create", name, hdr.Linkname)
			}
		}
		if opts.MaxEntries > 0 && n >= opts.MaxEntries {
			return n, &LimitError{Entry: name, Limit: int64(opts.MaxEntries)}
		}
		if hdr.Typeflag == tar.TypeReg {
			if opts.MaxBytes > 0 && hdr.Size > opts.MaxBytes-total {
				return n, &LimitError{Entry: name, Bytes: true, Limit: opts.MaxBytes}
			}
			total += hdr.Size
		}
		created[name] = true
		if hdr.Typeflag == tar.TypeSymlink {
			symlinks[name] = true
		} else {
			delete(symlinks, name) // replaced
		}
		if err := extractEntry(root, tr, hdr, name, opts, buf); err != nil {
			return n, fmt.Errorf("%s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTimes{name, hdr.ModTime})
		}
		n++
	}
	// Directory times last: creating their entries changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime); err != nil {
			return n, err
		}
	}
	return n, nil
}

// checkNotThrough refuses a name that goes through one of symlinks (a parent of it is one).
func checkNotThrough(symlinks map[string]bool, name string) error {
	if len(symlinks) == 0 {
		return nil
	}
	for i := range len(name) {
		if name[i] == '/' && symlinks[name[:i]] {
			return fmt.Errorf("tar entry %q: goes through the symlink %q that the stream created: refused, it could lead anywhere in the destination", name, name[:i])
		}
	}
	return nil
}

// checkPrefix refuses a name outside Prefix, when one is set.
func (o Options) checkPrefix(name string) error {
	if o.Prefix == "" || name == o.Prefix || strings.HasPrefix(name, o.Prefix+"/") {
		return nil
	}
	return fmt.Errorf("tar entry %q: outside %q, the only name this copy may create", name, o.Prefix)
}

// CheckName cleans a tar entry name and refuses one that is absolute or has ".." elements.
func CheckName(name string) (string, error) {
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, `\`) {
		return "", fmt.Errorf("tar entry %q: names must be relative", name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("tar entry %q: names must not contain \"..\"", name)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", fmt.Errorf("tar entry %q: names the destination itself", name)
	}
	return clean, nil
}

func extractEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header, name string, opts Options, buf []byte) error {
	if parent := path.Dir(name); parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	if opts.Owner {
		if hdr.Mode&04000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&02000 != 0 {
			mode |= fs.ModeSetgid
		}
	}
	if hdr.Mode&01000 != 0 {
		mode |= fs.ModeSticky
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		fi, err := root.Lstat(name)
		switch {
		case err == nil && !fi.IsDir():
			if err := root.Remove(name); err != nil {
				return err
			}
			fallthrough
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Mkdir(name, 0o700); err != nil {
				return err
			}
		case err != nil:
			return err
		}
	case tar.TypeReg:
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		n, err := copyFull(f, tr, buf)
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("the stream ends %d bytes into the file, which should hold %d: %w", n, hdr.Size, io.ErrUnexpectedEOF)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		if opts.Owner {
			return root.Lchown(name, hdr.Uid, hdr.Gid)
		}
		return nil
	case tar.TypeLink:
		target, err := CheckName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := removeNonDir(root, name); err != nil {
			return err
		}
		return root.Link(target, name)
	default:
		return fmt.Errorf("tar entry type %q is not supported (only files, directories, symlinks and hard links)", hdr.Typeflag)
	}
	if opts.Owner {
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	// After chown, which clears setuid and setgid bits.
	if err := root.Chmod(name, mode); err != nil {
		return err
	}
	return root.Chtimes(name, hdr.ModTime, hdr.ModTime)
}

// copyFull copies r to f in writes of len(buf) bytes, the last one excepted. io.CopyBuffer
// would hand r to os.File.ReadFrom, which writes in pieces of 32 KiB; with a network stream
// under the tar reader, even its own Reads would come in pieces of one message each. Fewer,
// larger writes cost the page cache far less. It returns how many bytes it wrote: io.ReadFull
// reports a truncated stream as the end of a short last write, which only the count tells.
func copyFull(f *os.File, r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

// removeNonDir removes name if it exists and is not a directory, so a new entry can take its
// place; an existing directory is an error.
func removeNonDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return errors.New("a directory is in the way")
	}
	return root.Remove(name)
}
