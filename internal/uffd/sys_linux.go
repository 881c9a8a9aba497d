package uffd

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userfaultfd ABI (include/uapi/linux/userfaultfd.h); the ioctl numbers are the same on
// x86_64 and arm64.
const (
	uffdAPI = 0xAA

	ioctlNew      = 0xaa00     // USERFAULTFD_IOC_NEW, _IO(0xAA, 0x00), on /dev/userfaultfd
	ioctlAPI      = 0xc018aa3f // _IOWR(UFFDIO, 0x3F, struct uffdio_api)
	ioctlRegister = 0xc020aa00 // _IOWR(UFFDIO, 0x00, struct uffdio_register)
	ioctlWake     = 0x8010aa02 // _IOR(UFFDIO, 0x02, struct uffdio_range)
	ioctlCopy     = 0xc028aa03 // _IOWR(UFFDIO, 0x03, struct uffdio_copy)
	ioctlZeropage = 0xc020aa04 // _IOWR(UFFDIO, 0x04, struct uffdio_zeropage)

	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	featureEventRemove = 1 << 3
	registerMissing    = 1 << 0

	msgSize = 32 // struct uffd_msg
)

// msg is a decoded struct uffd_msg: for a page fault Arg0 is the flags and Arg1 the
// address; for a remove or unmap event they are start and end.
type msg struct {
	Event      uint8
	Arg0, Arg1 uint64
}

func decodeMsg(b []byte) msg {
	return msg{Event: b[0], Arg0: binary.NativeEndian.Uint64(b[8:]), Arg1: binary.NativeEndian.Uint64(b[16:])}
}

type uffdioCopy struct {
	Dst, Src, Len, Mode uint64
	Copy                int64
}

type uffdioZeropage struct {
	Start, Len, Mode uint64
	Zeropage         int64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// copyPage fills [dst, dst+n) of the faulting process with n bytes at src in this one.
func copyPage(fd int, dst uint64, src unsafe.Pointer, n uint64) error {
	c := uffdioCopy{Dst: dst, Src: uint64(uintptr(src)), Len: n}
	return ioctl(fd, ioctlCopy, unsafe.Pointer(&c))
}

// zeroPage maps zero pages over [dst, dst+n).
func zeroPage(fd int, dst, n uint64) error {
	z := uffdioZeropage{Start: dst, Len: n}
	return ioctl(fd, ioctlZeropage, unsafe.Pointer(&z))
}

// newFD creates a userfaultfd as Firecracker's userfaultfd crate does: from /dev/userfaultfd
// where there is one (its mode decides who may, also in a jail, where the jailer makes the
// node for the jail's uid), else with the system call, which an unprivileged process may
// make only where vm.unprivileged_userfaultfd allows.
func newFD() (uintptr, error) {
	flags := uintptr(unix.O_CLOEXEC | unix.O_NONBLOCK)
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		defer unix.Close(dev)
		fd, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlNew, flags)
		if e != 0 {
			return 0, fmt.Errorf("/dev/userfaultfd: USERFAULTFD_IOC_NEW: %w", e)
		}
		return fd, nil
	}
	if !os.IsNotExist(err) {
		return 0, fmt.Errorf("open /dev/userfaultfd: %w", err)
	}
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("userfaultfd: %w", e)
	}
	return fd, nil
}

// New creates a userfaultfd the way Firecracker does (non-blocking, close-on-exec, with
// remove events) and registers [addr, addr+n) with it for missing-page faults. It is what
// the fake Firecracker and the tests use to stand in for Firecracker's side.
func New(addr, n uint64) (*os.File, error) {
	fd, err := newFD()
	if err != nil {
		return nil, err
	}
	f := os.NewFile(fd, "userfaultfd")
	api := struct{ API, Features, Ioctls uint64 }{API: uffdAPI, Features: featureEventRemove}
	if err := ioctl(int(fd), ioctlAPI, unsafe.Pointer(&api)); err != nil {
		f.Close()
		return nil, fmt.Errorf("UFFDIO_API: %w", err)
	}
	reg := struct{ Start, Len, Mode, Ioctls uint64 }{Start: addr, Len: n, Mode: registerMissing}
	if err := ioctl(int(fd), ioctlRegister, unsafe.Pointer(&reg)); err != nil {
		f.Close()
		return nil, fmt.Errorf("UFFDIO_REGISTER: %w", err)
	}
	return f, nil
}
