package agent

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// reaper starts commands and collects their exit statuses. As PID 1 it also reaps every
// orphan the kernel hands it: one loop waits for any child, and statuses of children it did not
// start are dropped. Otherwise each command gets a wait of its own, so a reaper inside another
// program (a test) never takes statuses that are not its.
type reaper struct {
	pid1    bool
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
}

func newReaper(pid1 bool) *reaper {
	r := &reaper{pid1: pid1, waiters: map[int]chan syscall.WaitStatus{}}
	if pid1 {
		go r.loop()
	}
	return r
}

// start forks and executes argv[0] (a path) and returns its pid and a channel that receives
// its wait status once.
func (r *reaper) start(path string, argv []string, attr *syscall.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	ch := make(chan syscall.WaitStatus, 1)
	// Held across the fork so that the loop cannot take the status before it has a waiter.
	r.mu.Lock()
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	if r.pid1 {
		r.waiters[pid] = ch
		r.mu.Unlock()
		return pid, ch, nil
	}
	r.mu.Unlock()
	go func() {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err != syscall.EINTR {
				break
			}
		}
		ch <- ws
	}()
	return pid, ch, nil
}

// loop reaps children on SIGCHLD, and once a second in case a signal was merged away.
func (r *reaper) loop() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD)
	tick := time.NewTicker(time.Second)
	for {
		select {
		case <-sigs:
		case <-tick.C:
		}
		r.reapAll()
	}
}

func (r *reaper) reapAll() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		r.mu.Lock()
		ch := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		}
	}
}
