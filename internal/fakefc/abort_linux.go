package fakefc

import (
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// abort ends the process by SIGABRT with the default action, as a Rust panic with
// panic = "abort" does (exit status 134 in a shell, "signal: aborted" in Go). Go's runtime
// handles SIGABRT itself, so the default action is restored first.
func abort() {
	runtime.LockOSThread()
	var act [4]uint64 // struct sigaction, all zero: SIG_DFL, no flags, empty mask
	_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGABRT),
		uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	_ = syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGABRT)
	os.Exit(134) // not reached
}
