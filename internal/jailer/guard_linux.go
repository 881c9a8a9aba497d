package jailer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/proc"
)

// Guard is the init process of a PID namespace that a jailed firecracker runs in. It holds a
// parent-death signal (SIGKILL) from the thread that cloned it, which stays alive until the
// guard ends, so the guard dies with this process, and the kernel then kills every process of
// its namespace. The guard does nothing else: it reaps the processes that end in its
// namespace, with every signal blocked and every file descriptor closed.
type Guard struct {
	pid   int
	start uint64
	pidfd int
	ns    *os.File // the guard's PID namespace
	done  chan struct{}
	once  sync.Once

	detached bool // it has no parent-death signal
}

// guardMask blocks every signal in the guard (SIGKILL and SIGSTOP cannot be blocked).
var guardMask = [1]uint64{^uint64(0)}

// cloneGuardOnly makes StartGuard clone this process even where it has a guard program to
// run (tests of cloneGuard).
var cloneGuardOnly = false

// guardNap is how long the guard sleeps while it has no process to reap.
var guardNap = unix.Timespec{Nsec: 50 * int64(time.Millisecond)}

// cloneGuard clones this process into a new PID namespace; the child becomes the guard and
// never returns. It is used where there is no guard program to run (guardExe). It runs in the
// child between clone and nothing else, so it may only make raw system calls (no allocation,
// no stack growth, no runtime), like syscall's own child code.
// syncR and syncW are the child's and the parent's ends of a socket pair: once the child has
// set the parent-death signal it says so on syncR and waits for the parent's go-ahead there
// (the end of the socket: the parent died before the go-ahead), and the parent sends it only
// once it has heard the child, which closes the race in which the parent dies before the
// signal is set (armGuard).
//
//go:norace
//go:nosplit
func cloneGuard(syncR, syncW int, pdeathsig uintptr) (pid uintptr, errno syscall.Errno) {
	pid, _, errno = syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(unix.CLONE_NEWPID|syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 || pid != 0 {
		return pid, errno
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&guardMask)), 0, 8, 0, 0)
	syscall.RawSyscall6(syscall.SYS_PRCTL, unix.PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0, 0)
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(syncW), 0, 0)
	var b [1]byte
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(syncR), uintptr(unsafe.Pointer(&b[0])), 1) // armed
	n, _, _ := syscall.RawSyscall(syscall.SYS_READ, uintptr(syncR), uintptr(unsafe.Pointer(&b[0])), 1)
	if n != 1 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 1, 0, 0) // the parent died before it let go
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_CLOSE_RANGE, 0, ^uintptr(0), 0); e != 0 {
		for fd := uintptr(0); fd < 65536; fd++ { // a kernel before 5.9
			syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
		}
	}
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_WAIT4, ^uintptr(0), 0, unix.WALL, 0, 0, 0)
		if e == syscall.ECHILD {
			syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&guardNap)), 0, 0)
		}
	}
}

// StartGuard starts a guard. Close (or Kill) ends it, and with it every process in its
// namespace. A detached guard has no parent-death signal: it, and its namespace, outlive this
// process, until something kills it (KillGuard).
func StartGuard(detached bool) (*Guard, error) {
	var sig uintptr = uintptr(syscall.SIGKILL)
	if detached {
		sig = 0
	}
	type result struct {
		g   *Guard
		err error
	}
	started := make(chan result, 1)
	done := make(chan struct{})
	go func() {
		// Never unlocked: the guard's parent-death signal follows this thread, which must
		// live as long as the guard, and exits with this goroutine once the guard is reaped.
		runtime.LockOSThread()
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			started <- result{err: fmt.Errorf("start jail guard: %w", err)}
			return
		}
		var pid int
		if exe := guardExe(); exe >= 0 && !cloneGuardOnly {
			pid, err = execGuard(exe, p[0], detached)
			if execRefused(err) {
				guardExecFailed.Store(true) // no child was left: clone instead, now and later
				err = nil
			}
		}
		if pid == 0 && err == nil {
			syscall.ForkLock.Lock()
			cpid, errno := cloneGuard(p[0], p[1], sig)
			syscall.ForkLock.Unlock()
			if pid = int(cpid); errno != 0 {
				err = fmt.Errorf("clone: %w", errno)
			}
		}
		if err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			started <- result{err: fmt.Errorf("start jail guard: %w", err)}
			return
		}
		g := &Guard{pid: pid, detached: detached, pidfd: -1, done: done}
		unix.Close(p[0])
		err = armGuard(p[1])
		unix.Close(p[1])
		// The guard is an unreaped child of this thread: its pid and namespace cannot change
		// hands while they are opened.
		if err == nil {
			if g.pidfd, err = unix.PidfdOpen(g.pid, 0); err == nil {
				g.ns, err = os.Open("/proc/" + strconv.Itoa(g.pid) + "/ns/pid")
			}
		}
		if err == nil {
			g.start, err = proc.StartTime(g.pid)
		}
		if err != nil {
			unix.Kill(g.pid, unix.SIGKILL)
			err = fmt.Errorf("start jail guard: %w", err)
		}
		started <- result{g, err}
		var ws unix.WaitStatus
		for {
			if _, err := unix.Wait4(g.pid, &ws, 0, nil); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		close(done)
	}()
	r := <-started
	if r.err != nil {
		if r.g != nil {
			<-done
			r.g.closeFiles()
		}
		return nil, r.err
	}
	return r.g, nil
}

// armGuard waits on sock, this process's end of the guard's socket pair, until the guard
// says it has set its parent-death signal, then gives it the go-ahead. Until then a death of
// this process would leave the guard running: the guard learns of it from the end of the
// socket, after setting the signal, and exits.
func armGuard(sock int) error {
	b := make([]byte, 1)
	for {
		n, err := unix.Read(sock, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err == nil && n != 1 {
			err = errors.New("it ended before it was ready")
		}
		if err != nil {
			return fmt.Errorf("wait for the jail guard: %w", err)
		}
		break
	}
	if _, err := unix.Write(sock, b); err != nil {
		return fmt.Errorf("let the jail guard go: %w", err)
	}
	return nil
}

// GoStartGuard starts a guard (StartGuard) in the background, for a caller with other work to
// do meanwhile: starting a process is most of a millisecond of a jailed start (more where the
// guard is a clone of this process). The function it returns waits for the guard; every call returns the same
// guard, which the caller closes (or hands to LaunchIn).
func GoStartGuard(detached bool) func() (*Guard, error) {
	type result struct {
		g   *Guard
		err error
	}
	ch := make(chan result, 1)
	go func() {
		g, err := StartGuard(detached)
		ch <- result{g, err}
	}()
	return sync.OnceValues(func() (*Guard, error) {
		r := <-ch
		return r.g, r.err
	})
}

// PID returns the guard's pid.
func (g *Guard) PID() int { return g.pid }

// StartTime returns the guard's start time (proc.StartTime), with PID its identity.
func (g *Guard) StartTime() uint64 { return g.start }

// KillGuard kills the guard pid started at startTime, found after its owner is gone (a
// detached jail's): only a process that is one, the init of a PID namespace running as this
// process's user, is killed, through a pidfd that pins it. A guard that is gone, or none
// (pid 0), is not an error.
func KillGuard(pid int, startTime uint64) error {
	if pid <= 0 {
		return nil // no guard recorded
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill jail guard %d: %w", pid, err)
	}
	defer unix.Close(fd)
	st, err := proc.StartTime(pid)
	if err != nil || st != startTime {
		return nil // gone, or the pid is another process's now
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	if !guardStatus(b) {
		return fmt.Errorf("kill jail guard %d: it is not a jail guard (not the init of a PID namespace of this user); left alone", pid)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill jail guard %d: %w", pid, err)
	}
	return nil
}

// guardStatus reports whether a process whose /proc/<pid>/status is b looks like a guard: the
// init of a PID namespace (other than the host's), run as this process's user.
func guardStatus(b []byte) bool {
	_, ns := statusPIDs(b)
	return len(ns) >= 2 && ns[len(ns)-1] == 1 && bytes.Contains(b, []byte("\nUid:\t"+strconv.Itoa(os.Geteuid())+"\t"))
}

// Done is closed once the guard has ended and been reaped.
func (g *Guard) Done() <-chan struct{} { return g.done }

// Around runs start, which forks a process, with the calling thread's new children put into
// the guard's PID namespace, then puts them back into the thread's own. It suits
// proc.Config.Around: it must run on a locked thread.
func (g *Guard) Around(start func() error) error {
	own, err := os.Open("/proc/thread-self/ns/pid_for_children")
	if err != nil {
		return fmt.Errorf("enter jail guard's namespace: %w", err)
	}
	defer own.Close()
	if err := unix.Setns(int(g.ns.Fd()), unix.CLONE_NEWPID); err != nil {
		return fmt.Errorf("enter jail guard's namespace: %w", err)
	}
	serr := start()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWPID); err != nil {
		// The thread cannot go back: it must not fork anything else. Its goroutine stays
		// locked to it and it exits with that goroutine.
		return errors.Join(serr, fmt.Errorf("leave jail guard's namespace: %w", err))
	}
	return serr
}

// Member returns the host pid of the process whose pid in the guard's namespace is nspid and
// whose parent (on the host) is parent, or the guard itself when parent is 0; the jailer
// writes firecracker's pid as its namespace sees it. The parent's own children are looked at
// first (one read, where the kernel lists them): a guard's only child, once the jailer has
// exited, is the firecracker it cloned. after, when not 0, is a host pid the process was
// forked after (the jailer's): pids are handed out upwards, so the few after it are looked at
// next, before all of /proc.
func (g *Guard) Member(nspid, parent, after int) (int, error) {
	if parent == 0 {
		parent = g.pid
	}
	match := func(pid int) bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return false
		}
		ppid, nsPIDs := statusPIDs(b)
		return ppid == parent && len(nsPIDs) >= 2 && nsPIDs[0] == pid && nsPIDs[1] == nspid
	}
	p := strconv.Itoa(parent)
	if b, err := os.ReadFile("/proc/" + p + "/task/" + p + "/children"); err == nil {
		for _, f := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(f)); err == nil && match(pid) {
				return pid, nil
			}
		}
	}
	if after > 0 {
		for pid := after + 1; pid <= after+16; pid++ {
			if match(pid) {
				return pid, nil
			}
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && match(pid) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process %d in the jail guard's namespace: %w", nspid, os.ErrProcessDone)
}

// statusPIDs reads PPid and NSpid from a /proc/<pid>/status.
func statusPIDs(b []byte) (ppid int, nsPIDs []int) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("PPid:")); ok {
			ppid, _ = strconv.Atoi(string(bytes.TrimSpace(rest)))
		}
		if rest, ok := bytes.CutPrefix(line, []byte("NSpid:")); ok {
			for _, f := range bytes.Fields(rest) {
				n, _ := strconv.Atoi(string(f))
				nsPIDs = append(nsPIDs, n)
			}
		}
	}
	return ppid, nsPIDs
}

// Kill sends SIGKILL to the guard, which ends every process of its namespace.
func (g *Guard) Kill() error {
	select {
	case <-g.done:
		return nil
	default:
	}
	if err := unix.PidfdSendSignal(g.pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill jail guard %d: %w", g.pid, err)
	}
	return nil
}

// Close kills the guard (and its namespace), waits until it is reaped, and releases it. It is
// safe to call more than once.
func (g *Guard) Close() error {
	var err error
	g.once.Do(func() {
		err = g.Kill()
		<-g.done
		g.closeFiles()
	})
	return err
}

func (g *Guard) closeFiles() {
	if g.ns != nil {
		g.ns.Close()
		g.ns = nil
	}
	if g.pidfd >= 0 {
		unix.Close(g.pidfd)
		g.pidfd = -1
	}
}
