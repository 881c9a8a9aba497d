//go:build unix

package baseimage

import (
	"os"
	"syscall"
)

func isRoot() bool { return os.Geteuid() == 0 }

// allocated is the disk space a file uses (sparse files use less than their size).
func allocated(info os.FileInfo) int64 {
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return info.Size()
}
