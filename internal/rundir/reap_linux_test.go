package rundir

import (
	"bufio"
	"context"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

// The main goroutine stays on the process's main thread, so that the "leader-exit" helper
// can end that thread alone.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{
		"leader-exit": testutil.LeaderExitMain,
		// A stand-in firecracker: it only has to run with the arguments a VM's has.
		"firecracker": func([]string) int { time.Sleep(time.Hour); return 0 },
	})
}

// TestReapWaitsForAnExitingProcess: a VM whose process is still exiting (its threads hold its
// devices and sockets) is left alone by a reap, after the bounded wait, and reaped once the
// process is gone.
func TestReapWaitsForAnExitingProcess(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(testutil.Link(t, "leader-exit"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	start, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if exiting, _ := proc.Exiting(pid, start); exiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper's main thread never ended")
		}
	}

	r := open(t, nil)
	d := create(t, r, "vm1")
	if err := d.WriteState(&State{PID: pid, StartTime: start}); err != nil {
		t.Fatal(err)
	}
	d.Unlock()
	t0 := time.Now()
	if reaped, err := r.Reap(context.Background()); err != nil || len(reaped) != 0 || !r.Has("vm1") {
		t.Fatalf("reap of an exiting vm: %v, %v", reaped, err)
	}
	if took := time.Since(t0); took < heldWait {
		t.Errorf("reap gave up on the exiting vm after %v, before the %v wait", took, heldWait)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if reaped, err := r.Reap(context.Background()); err != nil || len(reaped) != 1 {
		t.Fatalf("reap once the process is gone: %v, %v", reaped, err)
	}
}
