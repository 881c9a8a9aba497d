package testutil

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LeaderExitMain is a stand-in program for Main: its main thread exits on its own, leaving
// the process running in its other threads with a zombie main thread, as a killed
// multi-threaded Firecracker is for a moment. It prints "ready" first. The test package must
// keep its main goroutine on the main thread (func init() { runtime.LockOSThread() }); it
// returns 3 if it finds itself elsewhere.
func LeaderExitMain([]string) int {
	if unix.Gettid() != os.Getpid() {
		return 3
	}
	go time.Sleep(time.Hour)
	os.Stdout.WriteString("ready\n")
	syscall.Syscall(unix.SYS_EXIT, 0, 0, 0)
	return 0
}
