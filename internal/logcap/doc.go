// Package logcap bounds an append-only log file that another process keeps writing, such as
// the serial console Firecracker writes to its stdout.
//
// The writer holds its own descriptor (with O_APPEND), so the file cannot be renamed away or
// truncated from the front under it. Instead, Trim punches a hole over everything but the
// last limit bytes: the space (on tmpfs, the memory) is released, the writer goes on at the
// same offset, and the file's apparent size keeps growing. Readers that read the file from
// an offset call DataStart to skip the hole instead of reading zeros.
//
// Linux only (fallocate with FALLOC_FL_PUNCH_HOLE, lseek with SEEK_DATA); elsewhere Trim
// returns an error wrapping errors.ErrUnsupported and DataStart returns its offset.
package logcap
