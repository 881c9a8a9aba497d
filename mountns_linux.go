package smartvm

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// dirAlias makes, in the mount namespace of a Firecracker restored under another name,
// Parent/From show the directory Parent/To. A snapshot's VM state names the host paths of
// the VM it was taken of (its staged drives, its vsock socket), and Firecracker reopens them
// on load: through the alias each restored VM reopens its own copies instead, whether the
// original still runs, has ended or never ran here.
type dirAlias struct {
	Parent, From, To string
}

// aliasDirs is proc.Config.MountNS for aliases: per parent directory, a small private tmpfs
// over it holding only From and To, both bind mounts of the real To. Nothing of it is seen
// outside the namespace, and it goes away with the process.
func aliasDirs(aliases []dirAlias) func() error {
	return func() error {
		for _, a := range aliases {
			if err := aliasDir(a); err != nil {
				return fmt.Errorf("show %s as %s to firecracker: %w", filepath.Join(a.Parent, a.To), filepath.Join(a.Parent, a.From), err)
			}
		}
		return nil
	}
}

func aliasDir(a dirAlias) error {
	fd, err := unix.Open(filepath.Join(a.Parent, a.To), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Mount("tmpfs", a.Parent, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	src := "/proc/thread-self/fd/" + strconv.Itoa(fd)
	for _, name := range []string{a.To, a.From} {
		p := filepath.Join(a.Parent, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount: %w", err)
		}
	}
	return nil
}
