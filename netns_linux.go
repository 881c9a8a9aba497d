package smartvm

import (
	"fmt"
	"os"
	"runtime"
)

// callerNetns opens the network namespace of the thread the calling goroutine runs on: the
// process's, unless the caller locked its goroutine to a thread in another namespace.
func callerNetns() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open the calling thread's network namespace: %w", err)
	}
	return f, nil
}
