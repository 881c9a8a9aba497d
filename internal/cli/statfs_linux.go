package cli

import (
	"fmt"
	"syscall"
)

// tmpfsMagic is TMPFS_MAGIC from linux/magic.h.
const tmpfsMagic = 0x01021994

// Filesystem magic numbers (linux/magic.h) of the filesystems that make reflinks.
const (
	btrfsMagic = 0x9123683e
	xfsMagic   = 0x58465342
)

// fsInfo is what doctor reports about the runtime directory's filesystem.
type fsInfo struct {
	kind  string
	tmpfs bool
	// reflinks: copies share blocks until written (btrfs, XFS), so staging is free.
	reflinks bool
	free     int64
}

func statFS(dir string) (fsInfo, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fsInfo{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	info := fsInfo{kind: fmt.Sprintf("filesystem type %#x", st.Type), free: int64(st.Bavail) * st.Bsize}
	switch uint32(st.Type) {
	case tmpfsMagic:
		info.kind, info.tmpfs = "tmpfs", true
	case btrfsMagic:
		info.kind, info.reflinks = "btrfs", true
	case xfsMagic:
		info.kind, info.reflinks = "xfs", true
	}
	return info, nil
}
