// Package stage stages a VM's ephemeral writable drive: a private copy of an image that the VM
// may change and that is deleted with the VM.
//
// Copy clones the file with a reflink (FICLONE) where the filesystem supports it, which costs
// the same whatever the file's size. Elsewhere it copies only the data extents of the source
// (found with SEEK_DATA and SEEK_HOLE) with copy_file_range, or with pread and pwrite across
// filesystems that do not support that, and sets the copy's size so the source's holes stay
// holes. Staging then costs time in proportion to the data an image holds, not its size.
//
// Copy is implemented on Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
package stage

// Methods: how Copy staged a file (Result.Method).
const (
	// MethodReflink: the copy shares the source's blocks until either is written.
	MethodReflink = "reflink"
	// MethodSparse: the source's data extents were copied and its holes left as holes.
	MethodSparse = "sparse"
)

// Result says how Copy staged a file.
type Result struct {
	// Method is MethodReflink or MethodSparse.
	Method string
	// BytesWritten counts the data bytes copied: 0 for a reflink, the total length of the
	// source's data extents for a sparse copy.
	BytesWritten int64
}
