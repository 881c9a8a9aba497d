package cli

import (
	"fmt"
	"syscall"
)

// tmpfsMagic is TMPFS_MAGIC from linux/magic.h.
const tmpfsMagic = 0x01021994

// fsInfo is what doctor reports about the runtime directory's filesystem.
type fsInfo struct {
	kind  string
	tmpfs bool
	free  int64
}

func statFS(dir string) (fsInfo, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fsInfo{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	info := fsInfo{kind: fmt.Sprintf("filesystem type %#x", st.Type), free: int64(st.Bavail) * st.Bsize}
	if st.Type == tmpfsMagic {
		info.kind, info.tmpfs = "tmpfs", true
	}
	return info, nil
}
