package jailer

import (
	"errors"
	"os"
	"testing"

	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

// Member finds a process of the guard's namespace whose parent is not the guard (this
// process started it there), which the guard's children do not list.
func TestGuardMemberNotGuardsChild(t *testing.T) {
	testutil.RequiresRoot(t)
	wait := GoStartGuard(false)
	g, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if again, _ := wait(); again != g {
		t.Fatal("GoStartGuard's wait returned another guard the second time")
	}
	out, err := os.Create(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	p, err := proc.Start(proc.Config{Path: "/bin/sleep", Args: []string{"60"}, Stdout: out, Stderr: out,
		NoDeathSignal: true, Around: g.Around})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Signal(9); <-p.Done() }()
	for _, after := range []int{0, p.PID() - 1} {
		// The guard is 1 in its namespace, the sleep 2.
		if pid, err := g.Member(2, os.Getpid(), after); err != nil || pid != p.PID() {
			t.Errorf("Member(2, %d, %d) = %d, %v; want %d", os.Getpid(), after, pid, err, p.PID())
		}
	}
	if pid, err := g.Member(2, 0, 0); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Member(2, guard, 0) = %d, %v; want no process: the sleep is not the guard's child", pid, err)
	}
}

// LaunchIn refuses a guard whose parent-death signal does not match the config, and closes it.
func TestLaunchInDetachedMismatch(t *testing.T) {
	testutil.RequiresRoot(t)
	g, err := GoStartGuard(false)()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ID: "mismatch", ExecFile: "/bin/true", UID: 61005, GID: 61005, ChrootBase: t.TempDir(), NewPIDNS: true, Detached: true}
	if _, err := LaunchIn(g, "/bin/false", cfg, proc.Config{Stdout: os.Stderr, Stderr: os.Stderr}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("LaunchIn with an owned guard for a detached jail: %v, want ErrInvalid", err)
	}
	select {
	case <-g.Done():
	default:
		t.Fatal("LaunchIn left the refused guard running")
	}
}
