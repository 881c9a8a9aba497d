package netdev

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Capability numbers (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// checkCaps fails with ErrPermission, saying how to fix it, when the calling thread lacks
// CAP_NET_ADMIN, or CAP_SYS_ADMIN when netns (namespaces need it to be created and entered).
// When the capabilities cannot be read it lets the operations themselves fail.
func checkCaps(netns bool) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil
	}
	eff := uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	switch {
	case eff&(1<<capNetAdmin) == 0:
		return fmt.Errorf("%w: setting up a VM network needs CAP_NET_ADMIN, which this process lacks: run it as root, or grant the capability with `sudo setcap cap_net_admin+ep %s`",
			ErrPermission, executable())
	case netns && eff&(1<<capSysAdmin) == 0:
		return fmt.Errorf("%w: a per-VM network namespace needs CAP_SYS_ADMIN as well as CAP_NET_ADMIN, which this process lacks: run it as root, or grant them with `sudo setcap cap_net_admin,cap_sys_admin+ep %s`",
			ErrPermission, executable())
	}
	return nil
}

func executable() string {
	p, err := os.Executable()
	if err != nil {
		return "<program>"
	}
	return p
}

// permErr adds ErrPermission and the fix to EPERM and EACCES from the kernel.
func permErr(err error) error {
	switch {
	case errors.Is(err, unix.EACCES): // its text is ErrPermission's
		return fmt.Errorf("%w: run as root, or grant CAP_NET_ADMIN with `sudo setcap cap_net_admin+ep %s`", ErrPermission, executable())
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w (%w): run as root, or grant CAP_NET_ADMIN with `sudo setcap cap_net_admin+ep %s`", ErrPermission, err, executable())
	}
	return err
}
