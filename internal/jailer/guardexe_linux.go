package jailer

import (
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// guardImage wraps guardCode in a static ELF executable: the guard as a program of its own,
// which StartGuard runs from memory (guardExe). Cloning this process instead (cloneGuard)
// copies its page tables, and then every page that this process writes afterwards is copied
// on its first write while the guard shares it (thousands of faults, milliseconds, and a copy
// of this process's memory held by every guard). The program blocks every signal, takes
// SIGKILL as its parent-death signal unless it is given an argument (a detached guard's),
// says so with a byte on fd 3 (a socket), waits for a byte there (EOF: the parent died before
// it let go; see armGuard), closes every descriptor and reaps whatever ends in its namespace,
// forever.
func guardImage() []byte {
	const (
		base    = 0x400000
		ehSize  = 64
		phSize  = 56
		phCount = 2
		codeOff = ehSize + phCount*phSize
	)
	img := make([]byte, codeOff, codeOff+len(guardCode))
	le := binary.LittleEndian
	copy(img, "\x7fELF\x02\x01\x01") // 64-bit, little-endian, ELF version 1, System V ABI
	le.PutUint16(img[16:], 2)        // ET_EXEC
	le.PutUint16(img[18:], guardMachine)
	le.PutUint32(img[20:], 1)
	le.PutUint64(img[24:], base+codeOff) // entry
	le.PutUint64(img[32:], ehSize)       // program headers
	le.PutUint16(img[52:], ehSize)
	le.PutUint16(img[54:], phSize)
	le.PutUint16(img[56:], phCount)
	ph := img[ehSize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD of the whole file, read and execute
	le.PutUint32(ph[4:], 5)
	le.PutUint64(ph[16:], base)
	le.PutUint64(ph[24:], base)
	le.PutUint64(ph[32:], uint64(codeOff+len(guardCode)))
	le.PutUint64(ph[40:], uint64(codeOff+len(guardCode)))
	le.PutUint64(ph[48:], 0x1000)
	ph = ph[phSize:]
	le.PutUint32(ph[0:], 0x6474e551) // PT_GNU_STACK: a stack that is not executable
	le.PutUint32(ph[4:], 6)
	return append(img, guardCode...)
}

// guardExe returns a sealed memfd holding guardImage, made once per process; -1 where there
// is no guard program for this architecture, no memfd, or running it failed once
// (guardExecFailed).
func guardExe() int {
	if guardExecFailed.Load() {
		return -1
	}
	return guardMemfd()
}

// guardExecFailed is set when the guard program could not be run (a kernel that refuses to
// execute memfds, say): StartGuard clones this process from then on.
var guardExecFailed atomic.Bool

var guardMemfd = sync.OnceValue(func() int {
	if guardCode == nil {
		return -1
	}
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate("smartvm-jail-guard", flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // a kernel before 6.3, without MFD_EXEC
		fd, err = unix.MemfdCreate("smartvm-jail-guard", flags)
	}
	if err != nil {
		return -1
	}
	img := guardImage()
	n, err := unix.Write(fd, img)
	if err == nil && n != len(img) {
		err = io.ErrShortWrite
	}
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	}
	if err != nil {
		unix.Close(fd)
		return -1
	}
	return fd
})

// execGuard starts the guard program (guardExe) as the init of a new PID namespace, with
// syncR, the guard's end of its socket pair (armGuard), as its fd 3. It must run on the thread that the
// guard's parent-death signal will follow.
func execGuard(exe, syncR int, detached bool) (int, error) {
	argv := []string{"jail-guard"}
	if detached {
		argv = append(argv, "detached")
	}
	closed := ^uintptr(0)
	return syscall.ForkExec("/proc/self/fd/"+strconv.Itoa(exe), argv, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{},
		Files: []uintptr{closed, closed, closed, uintptr(syncR)},
		Sys:   &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID},
	})
}

// execRefused reports whether err, from execGuard, is the kernel's refusal to run the guard
// program (a memfd it may not execute), rather than a failure to start any process.
func execRefused(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOEXEC)
}
