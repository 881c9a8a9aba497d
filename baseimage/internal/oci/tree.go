package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Limits on what one image may hold.
const (
	// MaxNameLen is the longest path of an entry, and MaxComponentLen the longest element of
	// one (ext4's limit).
	MaxNameLen      = 4096
	MaxComponentLen = 255
	// MaxXattrBytes bounds the extended attributes of one entry (names and values): ext4 keeps
	// them in the inode and one block.
	MaxXattrBytes = 3072
	// MaxDepth is the deepest directory nesting an entry may have.
	MaxDepth = 256
)

// Default limits on what an image unpacks to (Limits).
const (
	DefaultMaxBytes   int64 = 32 << 30
	DefaultMaxEntries       = 1 << 20
)

// Limits bound what a tree takes on the disk it is unpacked to: a layer is a compressed stream
// from a registry, and a small blob can unpack to any size (a decompression bomb) or to
// millions of empty files.
type Limits struct {
	// MaxBytes is the most bytes of regular file contents written, summed over every layer
	// (files a later layer removes count too). Zero: DefaultMaxBytes (32 GiB); negative: no
	// limit.
	MaxBytes int64
	// MaxEntries is the most tar entries, summed over every layer. Zero: DefaultMaxEntries
	// (1048576); negative: no limit.
	MaxEntries int
}

// LimitError reports an image past one of its Limits. Nothing past the limit was written.
type LimitError struct {
	// Bytes is set when the byte limit was reached, else the entry limit was.
	Bytes bool
	// Limit is the limit that was reached.
	Limit int64
}

func (e *LimitError) Error() string {
	if e.Bytes {
		return fmt.Sprintf("the image unpacks to more than %d bytes of files, its size limit", e.Limit)
	}
	return fmt.Sprintf("the image has more than %d entries, its entry limit", e.Limit)
}

// Is makes errors.Is(err, ErrLimit) hold.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// Sentinel errors.
var (
	// ErrLimit reports an image past its Limits (a *LimitError says which).
	ErrLimit = errors.New("image past its unpacked size limits")
	// ErrUnsafe reports an entry that would write outside the tree: a ".." element, an
	// absolute name, a path through a symlink, a hard link to a name outside the tree.
	ErrUnsafe = errors.New("entry would write outside the root filesystem")
	// ErrInvalid reports an entry the tree cannot hold: an unsupported type, a bad name, an
	// entry beyond the limits.
	ErrInvalid = errors.New("invalid layer entry")
)

// errNotExist is a missing directory on an entry's path.
var errNotExist = errors.New("does not exist")

// EntryError reports a layer entry that was refused or could not be written.
type EntryError struct {
	// Layer names the layer as the caller named it to ApplyLayer, for example
	// "layer 2/5 sha256:0123456789ab".
	Layer string
	// Entry is the entry's name as the tar stream has it.
	Entry string
	Err   error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s: entry %q: %v", e.Layer, e.Entry, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// File types of an Inode, as in st_mode.
const (
	TypeReg   = 0o100000
	TypeDir   = 0o040000
	TypeLink  = 0o120000
	TypeChar  = 0o020000
	TypeBlock = 0o060000
	TypeFifo  = 0o010000
)

// Inode is what an image says about one file; hard links share one.
type Inode struct {
	// Type is one of the Type constants; Perm holds the permission, set-id and sticky bits.
	Type, Perm uint32
	UID, GID   int
	// Size is a regular file's size.
	Size int64
	// Major and Minor are a device node's numbers.
	Major, Minor int64
	// Xattrs are the extended attributes, name to raw value.
	Xattrs  map[string]string
	ModTime time.Time
	// Target is a symlink's target.
	Target string
	// disk is what the file on disk was given (perm bits), to tell what needs fixing up.
	diskPerm uint32
}

// node is one name in the tree.
type node struct {
	name     string
	parent   *node
	children map[string]*node // directories only
	ino      *Inode
	layer    int // index of the layer that last wrote this name
}

func (n *node) path() string {
	if n.parent == nil {
		return "."
	}
	var parts []string
	for x := n; x.parent != nil; x = x.parent {
		parts = append(parts, x.name)
	}
	slices.Reverse(parts)
	return strings.Join(parts, "/")
}

// Tree is an image's root filesystem being assembled in a directory. It is not safe for
// concurrent use.
type Tree struct {
	root     *os.Root
	top      *node
	layer    int
	entries  int
	written  int64 // bytes of regular file contents, over all layers
	limits   Limits
	fdPath   string // how the tree's directory is opened
	name     string // and how errors name it
	diskUID  int
	diskGID  int
	copyBuf  []byte
	closeErr error
}

// NewTree starts a tree in the empty directory dir, held open by the caller, who owns it and
// later removes it. The tree works in that directory, whatever its path now names: it is
// opened through the descriptor (/proc/self/fd), never by its path. What the tree writes is
// bounded by lim.
func NewTree(dir *os.File, lim Limits) (*Tree, error) {
	fdPath := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd()))
	r, err := os.OpenRoot(fdPath)
	if err != nil {
		return nil, fmt.Errorf("open rootfs tree: %w", err)
	}
	top := &node{children: map[string]*node{}, ino: &Inode{Type: TypeDir, Perm: 0o755, ModTime: time.Unix(0, 0), diskPerm: 0o755}}
	if err := r.Chmod(".", 0o755); err != nil {
		r.Close()
		return nil, fmt.Errorf("open rootfs tree: %w", err)
	}
	if lim.MaxBytes == 0 {
		lim.MaxBytes = DefaultMaxBytes
	}
	if lim.MaxEntries == 0 {
		lim.MaxEntries = DefaultMaxEntries
	}
	return &Tree{root: r, top: top, limits: lim, fdPath: fdPath, name: dir.Name(), diskUID: os.Geteuid(), diskGID: os.Getegid(), copyBuf: make([]byte, 1<<20)}, nil
}

// Close releases the tree's directory handle. The files stay.
func (t *Tree) Close() error { return t.root.Close() }

// ApplyLayer applies one layer, a tar stream, on top of what is in the tree. name identifies
// the layer in errors. A failed layer leaves the tree half applied: discard it.
func (t *Tree) ApplyLayer(name string, r io.Reader) error {
	t.layer++
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: read tar: %w", name, err)
		}
		t.entries++
		if max := t.limits.MaxEntries; max >= 0 && t.entries > max {
			return &EntryError{Layer: name, Entry: hdr.Name, Err: &LimitError{Limit: int64(max)}}
		}
		if err := t.apply(hdr, tr); err != nil {
			return &EntryError{Layer: name, Entry: hdr.Name, Err: err}
		}
	}
}

// cleanName checks an entry name and returns its elements ("" for the root).
func cleanName(name string) ([]string, error) {
	if len(name) > MaxNameLen {
		return nil, fmt.Errorf("%w: the name is longer than %d bytes", ErrInvalid, MaxNameLen)
	}
	if strings.HasPrefix(name, "/") {
		return nil, fmt.Errorf("%w: the name is absolute", ErrUnsafe)
	}
	var out []string
	for _, e := range strings.Split(name, "/") {
		switch e {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("%w: the name has a \"..\" element", ErrUnsafe)
		}
		if len(e) > MaxComponentLen {
			return nil, fmt.Errorf("%w: an element of the name is longer than %d bytes", ErrInvalid, MaxComponentLen)
		}
		for _, c := range []byte(e) {
			if c < 0x20 || c == 0x7f {
				return nil, fmt.Errorf("%w: the name has a control character (0x%02x)", ErrInvalid, c)
			}
		}
		out = append(out, e)
	}
	if len(out) > MaxDepth {
		return nil, fmt.Errorf("%w: the name is nested deeper than %d directories", ErrInvalid, MaxDepth)
	}
	return out, nil
}

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	whiteoutMeta   = ".wh..wh."
)

func (t *Tree) apply(hdr *tar.Header, data io.Reader) error {
	elems, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if err := checkNumbers(hdr); err != nil {
		return err
	}
	if len(elems) == 0 { // the root directory itself
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: the root must be a directory", ErrInvalid)
		}
		return t.setMeta(t.top, hdr)
	}
	base := elems[len(elems)-1]
	isWhiteout := strings.HasPrefix(base, whiteoutPrefix)
	parent, err := t.parentDir(elems[:len(elems)-1], !isWhiteout)
	if isWhiteout && errors.Is(err, errNotExist) {
		return nil // nothing there to hide
	}
	if err != nil {
		return err
	}
	switch {
	case base == whiteoutOpaque:
		return t.opaque(parent)
	case strings.HasPrefix(base, whiteoutMeta):
		return nil // other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the image
	case strings.HasPrefix(base, whiteoutPrefix):
		victim := strings.TrimPrefix(base, whiteoutPrefix)
		if _, err := cleanName(victim); err != nil || victim == "" || victim == "." {
			return fmt.Errorf("%w: whiteout of %q", ErrInvalid, victim)
		}
		if n := parent.children[victim]; n != nil && n.layer < t.layer {
			return t.remove(n)
		}
		return nil
	}
	return t.create(parent, base, hdr, data)
}

// Largest owner and device numbers an ext4 inode holds: uid and gid are 32 bits, (uid_t)-1
// meaning none; a device number has 12 bits of major and 20 of minor.
const (
	maxID    = 1<<32 - 2
	maxMajor = 1<<12 - 1
	maxMinor = 1<<20 - 1
)

// checkNumbers refuses an owner or a device number the image cannot hold, before it reaches
// the fixups (and their debugfs script).
func checkNumbers(hdr *tar.Header) error {
	if uid, gid := int64(hdr.Uid), int64(hdr.Gid); uid < 0 || uid > maxID || gid < 0 || gid > maxID {
		return fmt.Errorf("%w: owner %d:%d, want uid and gid from 0 to %d", ErrInvalid, hdr.Uid, hdr.Gid, int64(maxID))
	}
	if hdr.Typeflag != tar.TypeChar && hdr.Typeflag != tar.TypeBlock {
		return nil
	}
	if hdr.Devmajor < 0 || hdr.Devmajor > maxMajor || hdr.Devminor < 0 || hdr.Devminor > maxMinor {
		return fmt.Errorf("%w: device %d:%d, want a major from 0 to %d and a minor from 0 to %d", ErrInvalid, hdr.Devmajor, hdr.Devminor, maxMajor, maxMinor)
	}
	return nil
}

// parentDir walks elems from the root and returns the directory they name, creating missing
// directories (mode 0755, root's) when create is set. A symlink or a non-directory on the
// way is refused.
func (t *Tree) parentDir(elems []string, create bool) (*node, error) {
	n := t.top
	for i, e := range elems {
		c := n.children[e]
		switch {
		case c == nil && create:
			c = &node{name: e, parent: n, children: map[string]*node{}, layer: t.layer,
				ino: &Inode{Type: TypeDir, Perm: 0o755, ModTime: time.Unix(0, 0), diskPerm: 0o755}}
			if err := t.root.Mkdir(c.path(), 0o755); err != nil {
				return nil, t.diskErr("create directory", err)
			}
			n.children[e] = c
		case c == nil:
			return nil, fmt.Errorf("%w: /%s %w", ErrInvalid, strings.Join(elems[:i+1], "/"), errNotExist)
		case c.ino.Type == TypeLink:
			return nil, fmt.Errorf("%w: its path goes through /%s, a symlink to %q, which could lead anywhere", ErrUnsafe, strings.Join(elems[:i+1], "/"), c.ino.Target)
		case c.ino.Type != TypeDir:
			return nil, fmt.Errorf("%w: its path goes through /%s, which is not a directory", ErrInvalid, strings.Join(elems[:i+1], "/"))
		}
		n = c
	}
	return n, nil
}

// opaque removes what lower layers put under dir, keeping what this layer wrote.
func (t *Tree) opaque(dir *node) error {
	for _, c := range dir.children {
		switch {
		case c.layer < t.layer:
			if err := t.remove(c); err != nil {
				return err
			}
		case c.ino.Type == TypeDir:
			if err := t.opaque(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// remove deletes n and everything below it.
func (t *Tree) remove(n *node) error {
	if err := t.root.RemoveAll(n.path()); err != nil {
		return t.diskErr("remove", err)
	}
	delete(n.parent.children, n.name)
	return nil
}

// xattrs returns the extended attributes of a tar header (PAX SCHILY.xattr.*), bounded.
func xattrs(hdr *tar.Header) (map[string]string, error) {
	var out map[string]string
	total := 0
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if name == "" || strings.ContainsAny(name, "\x00\n\r\" ") {
			return nil, fmt.Errorf("%w: extended attribute name %q", ErrInvalid, name)
		}
		total += len(name) + len(v)
		if total > MaxXattrBytes {
			return nil, fmt.Errorf("%w: extended attributes are larger than %d bytes", ErrInvalid, MaxXattrBytes)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = v
	}
	return out, nil
}

// setMeta records a directory header's metadata on an existing directory.
func (t *Tree) setMeta(n *node, hdr *tar.Header) error {
	x, err := xattrs(hdr)
	if err != nil {
		return err
	}
	ino := n.ino
	ino.Perm, ino.UID, ino.GID, ino.ModTime, ino.Xattrs = uint32(hdr.Mode)&0o7777, hdr.Uid, hdr.Gid, hdr.ModTime, x
	n.layer = t.layer
	return t.chmodDisk(n)
}

// diskPerm is the mode a file is given on disk: the image's permission bits, plus what the
// owner (this process) needs to read it, and for directories to change them. Set-id and
// sticky bits wait for the fixups.
func diskPerm(typ, perm uint32) uint32 {
	p := perm & 0o777
	if typ == TypeDir {
		return p | 0o700
	}
	return p | 0o600
}

func (t *Tree) chmodDisk(n *node) error {
	want := diskPerm(n.ino.Type, n.ino.Perm)
	if want == n.ino.diskPerm {
		return nil
	}
	if err := t.root.Chmod(n.path(), fs.FileMode(want)); err != nil {
		return t.diskErr("chmod", err)
	}
	n.ino.diskPerm = want
	return nil
}

func (t *Tree) create(parent *node, base string, hdr *tar.Header, data io.Reader) error {
	old := parent.children[base]
	if hdr.Typeflag == tar.TypeDir && old != nil && old.ino.Type == TypeDir {
		return t.setMeta(old, hdr) // a directory again: its content stays
	}
	x, err := xattrs(hdr)
	if err != nil {
		return err
	}
	ino := &Inode{Perm: uint32(hdr.Mode) & 0o7777, UID: hdr.Uid, GID: hdr.Gid, ModTime: hdr.ModTime, Xattrs: x}
	var link *node
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		// Counted before anything is written, so the disk never holds more than the limit.
		if max := t.limits.MaxBytes; max >= 0 && hdr.Size > max-t.written {
			return &LimitError{Bytes: true, Limit: max}
		}
		t.written += hdr.Size
		ino.Type, ino.Size = TypeReg, hdr.Size
	case tar.TypeDir:
		ino.Type = TypeDir
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > MaxNameLen || strings.ContainsRune(hdr.Linkname, 0) {
			return fmt.Errorf("%w: symlink target %q", ErrInvalid, hdr.Linkname)
		}
		ino.Type, ino.Target, ino.Perm = TypeLink, hdr.Linkname, 0o777
	case tar.TypeLink:
		elems, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		if len(elems) == 0 {
			return fmt.Errorf("%w: hard link to the root directory", ErrInvalid)
		}
		dir, err := t.parentDir(elems[:len(elems)-1], false)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		if link = dir.children[elems[len(elems)-1]]; link == nil {
			return fmt.Errorf("%w: hard link target %q is not in the image", ErrInvalid, hdr.Linkname)
		}
		if t := link.ino.Type; t != TypeReg && t != TypeLink {
			return fmt.Errorf("%w: hard link to %q, which is not a regular file or symlink", ErrInvalid, hdr.Linkname)
		}
		if link == old {
			return nil // a link to itself
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		ino.Type = map[byte]uint32{tar.TypeChar: TypeChar, tar.TypeBlock: TypeBlock, tar.TypeFifo: TypeFifo}[hdr.Typeflag]
		ino.Major, ino.Minor = hdr.Devmajor, hdr.Devminor
	default:
		return fmt.Errorf("%w: unsupported tar entry type %q", ErrInvalid, hdr.Typeflag)
	}
	if old != nil {
		if err := t.remove(old); err != nil {
			return err
		}
	}
	n := &node{name: base, parent: parent, ino: ino, layer: t.layer}
	p := n.path()
	switch {
	case link != nil:
		n.ino = link.ino
		if err := t.root.Link(link.path(), p); err != nil {
			return t.diskErr("hard link", err)
		}
	case ino.Type == TypeDir:
		n.children = map[string]*node{}
		ino.diskPerm = diskPerm(TypeDir, ino.Perm)
		if err := t.root.Mkdir(p, fs.FileMode(ino.diskPerm)); err != nil {
			return t.diskErr("create directory", err)
		}
		if err := t.root.Chmod(p, fs.FileMode(ino.diskPerm)); err != nil { // past the umask
			return t.diskErr("chmod", err)
		}
	case ino.Type == TypeLink:
		if err := t.root.Symlink(ino.Target, p); err != nil {
			return t.diskErr("create symlink", err)
		}
	case ino.Type == TypeReg:
		if err := t.writeFile(p, ino, data); err != nil {
			return err
		}
	default:
		// Device nodes and FIFOs need root or a mkfifo that os.Root lacks: an empty file
		// holds the name, and the fixups turn it into the node in the image.
		if err := t.writeFile(p, ino, strings.NewReader("")); err != nil {
			return err
		}
	}
	parent.children[base] = n
	return nil
}

func (t *Tree) writeFile(p string, ino *Inode, data io.Reader) error {
	ino.diskPerm = diskPerm(TypeReg, ino.Perm)
	f, err := t.root.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fs.FileMode(ino.diskPerm))
	if err != nil {
		return t.diskErr("create", err)
	}
	n, err := io.CopyBuffer(onlyWriter{f}, io.LimitReader(data, ino.Size), t.copyBuf)
	if err == nil && n != ino.Size {
		err = io.ErrUnexpectedEOF
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return t.diskErr("write", err)
	}
	if err := t.root.Chmod(p, fs.FileMode(ino.diskPerm)); err != nil { // past the umask
		return t.diskErr("chmod", err)
	}
	return nil
}

// onlyWriter hides ReadFrom, so CopyBuffer uses its buffer.
type onlyWriter struct{ io.Writer }

// ErrNoSpace reports that the file system holding the tree is full.
var ErrNoSpace = errors.New("no space left for the unpacked image")

// diskErr describes a failed file operation, with the tree directory's name in place of its
// /proc/self/fd path.
func (t *Tree) diskErr(op string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		if rest, ok := strings.CutPrefix(pe.Path, t.fdPath); ok {
			pe.Path = t.name + rest
		}
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w (%w)", op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// AddFile writes a regular file into the tree, replacing what is at name (an absolute path in
// the image), creating missing directories (0755, root's). It refuses a path through a
// symlink as ApplyLayer does.
func (t *Tree) AddFile(name string, data []byte, perm uint32, uid, gid int) error {
	t.layer++
	hdr := &tar.Header{Name: strings.TrimPrefix(name, "/"), Typeflag: tar.TypeReg, Mode: int64(perm),
		Uid: uid, Gid: gid, Size: int64(len(data)), ModTime: time.Now().Truncate(time.Second)}
	if err := t.apply(hdr, bytes.NewReader(data)); err != nil {
		return &EntryError{Layer: "smartvm's own files", Entry: name, Err: err}
	}
	return nil
}

// Entry is one name in the finished tree with its inode.
type Entry struct {
	// Path is absolute in the image ("/" for the root).
	Path string
	*Inode
	// First is set on the first name of an inode (hard links share it).
	First bool
}

// Walk calls fn for every name in the tree, parents before children, names sorted.
func (t *Tree) Walk(fn func(Entry) error) error {
	seen := map[*Inode]bool{}
	var walk func(n *node) error
	walk = func(n *node) error {
		p := "/" + strings.TrimPrefix(n.path(), ".")
		if err := fn(Entry{Path: path.Clean(p), Inode: n.ino, First: !seen[n.ino]}); err != nil {
			return err
		}
		seen[n.ino] = true
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if err := walk(n.children[name]); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(t.top)
}

// Usage is the space a tree needs in an ext4 image.
type Usage struct {
	// Bytes counts data blocks: each file, directory and long symlink rounded up to 4 KiB.
	Bytes int64
	// Inodes counts distinct inodes.
	Inodes int64
	// Content is the sum of the regular files' sizes.
	Content int64
}

// Finish sets modification times on disk (mkfs.ext4 -d copies them) and returns the tree's
// usage. Call it once every layer and file is in.
func (t *Tree) Finish() (Usage, error) {
	var u Usage
	err := t.Walk(func(e Entry) error {
		if !e.First {
			return nil
		}
		u.Inodes++
		switch e.Type {
		case TypeReg:
			u.Bytes += (e.Size + 4095) &^ 4095
			u.Content += e.Size
		case TypeDir:
			u.Bytes += 4096
		case TypeLink:
			if len(e.Target) >= 60 {
				u.Bytes += 4096
			}
		}
		if len(e.Xattrs) > 0 {
			u.Bytes += 4096
		}
		return nil
	})
	if err != nil {
		return u, err
	}
	// Children first, so a directory's time is set after its entries change it.
	var stamp func(n *node) error
	stamp = func(n *node) error {
		for _, c := range n.children {
			if err := stamp(c); err != nil {
				return err
			}
		}
		if n.ino.Type == TypeLink {
			return nil
		}
		if err := t.root.Chtimes(n.path(), n.ino.ModTime, n.ino.ModTime); err != nil {
			return t.diskErr("set times", err)
		}
		return nil
	}
	return u, stamp(t.top)
}

// NeedsFixup reports whether the image must be told more about e than mkfs.ext4 -d copies
// from the disk: another owner, set-id or sticky bits, a device node or FIFO, xattrs.
func (t *Tree) NeedsFixup(e Entry) bool {
	return e.UID != t.diskUID || e.GID != t.diskGID || (e.Type != TypeLink && e.Perm != e.diskPerm) ||
		e.Type == TypeChar || e.Type == TypeBlock || e.Type == TypeFifo || len(e.Xattrs) > 0
}
