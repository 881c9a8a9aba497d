package jailer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DetectCgroups reads this host's cgroup layout from /proc/self/mountinfo and /proc/cgroups.
func DetectCgroups() (Layout, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return Layout{}, fmt.Errorf("detect cgroups: %w", err)
	}
	pc, err := os.ReadFile("/proc/cgroups")
	if err != nil && !errors.Is(err, fs.ErrNotExist) { // a pure v2 kernel may lack it
		return Layout{}, fmt.Errorf("detect cgroups: %w", err)
	}
	l := ParseMountinfo(mi, pc, nil)
	if l.V2 != "" {
		c, err := os.ReadFile(filepath.Join(l.V2, "cgroup.controllers"))
		if err != nil {
			return Layout{}, fmt.Errorf("detect cgroups: %w", err)
		}
		l = ParseMountinfo(mi, pc, c)
	}
	return l, nil
}

// RemoveCgroups removes dirs, a jail's cgroup directories (Layout.CgroupDirs), and each one's
// parent too where it is left empty (it is shared with other jails). The jail's processes
// must have been killed: a cgroup whose processes are still exiting is busy for a moment,
// which is waited out while ctx allows, at most 5 s. Only directories are removed (rmdir),
// and missing ones are not an error.
func RemoveCgroups(ctx context.Context, dirs ...string) error {
	var errs []error
	for _, d := range dirs {
		errs = append(errs, removeCgroup(ctx, d))
	}
	return errors.Join(errs...)
}

// cgroupBusyWait bounds RemoveCgroups' wait for a busy cgroup.
const cgroupBusyWait = 5 * time.Second

func removeCgroup(ctx context.Context, d string) error {
	deadline := time.Now().Add(cgroupBusyWait)
	for {
		err := unix.Rmdir(d)
		if err == nil || errors.Is(err, unix.ENOENT) {
			break
		}
		if !errors.Is(err, unix.EBUSY) || ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := unix.Rmdir(filepath.Dir(d)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("remove cgroup %s: %w", filepath.Dir(d), err)
	}
	return nil
}

// PrepareCgroups makes what the jailer cannot: under cgroup v1 a new cpuset cgroup starts with
// no CPUs and no memory nodes, so the jailer's write of its pid there fails (ENOSPC). For a
// cpuset setting it creates the parent and the jail's cpuset cgroups first, each inheriting
// cpuset.cpus and cpuset.mems from the level above. RemoveCgroups removes them.
func PrepareCgroups(l Layout, cfg Config) error {
	if cfg.CgroupVersion == 2 {
		return nil
	}
	uses := false
	for _, s := range cfg.Cgroups {
		uses = uses || s.File == "cpuset.cpus" || s.File == "cpuset.mems"
	}
	mnt := l.Mount(1, "cpuset")
	if !uses || mnt == "" {
		return nil
	}
	dir := mnt
	for _, c := range []string{cfg.CgroupParent(), cfg.ID} {
		above := dir
		dir = filepath.Join(dir, c)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("prepare cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return fmt.Errorf("prepare cgroup %s: %w", dir, err)
			}
			if len(bytes.TrimSpace(cur)) > 0 {
				continue
			}
			val, err := os.ReadFile(filepath.Join(above, f))
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, f), val, 0)
			}
			if err != nil {
				return fmt.Errorf("prepare cgroup %s: inherit %s: %w", dir, f, err)
			}
		}
	}
	return nil
}
