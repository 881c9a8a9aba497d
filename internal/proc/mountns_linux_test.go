package proc

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testutil"
)

// TestStartMountNS: a mount MountNS makes is seen by the child only; the thread that made
// it is not reused, so every thread of this process stays in its mount namespace; an error
// from MountNS fails Start before the fork.
func TestStartMountNS(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, detached := range []bool{false, true} {
		out, errf := files(t)
		p, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"sleep"}, Stdout: out, Stderr: errf, Detached: detached,
			MountNS: func() error { return unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16k") }})
		if err != nil {
			t.Fatal(err)
		}
		child, _ := os.ReadDir("/proc/" + strconv.Itoa(p.PID()) + "/root" + dir)
		host, _ := os.ReadDir(dir)
		if len(child) != 0 || len(host) != 1 {
			t.Errorf("detached=%v: the child sees %d entries in %s (want its tmpfs, empty), this process %d (want the marker)", detached, len(child), dir, len(host))
		}
		if mntNS(t, "/proc/"+strconv.Itoa(p.PID())) == mntNS(t, "/proc/self") {
			t.Errorf("detached=%v: the child shares this process's mount namespace", detached)
		}
		p.Signal(syscall.SIGKILL)
		waitDone(t, p)
	}
	// The forking threads exit once their children are reaped.
	want := mntNS(t, "/proc/self")
	deadline := time.Now().Add(5 * time.Second)
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		odd := 0
		for _, task := range tasks {
			if mntNS(t, "/proc/self/task/"+task.Name()) != want {
				odd++
			}
		}
		if odd == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threads of this process are in another mount namespace", odd)
		}
		time.Sleep(10 * time.Millisecond)
	}

	boom := errors.New("boom")
	out, errf := files(t)
	if _, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"exit", "0"}, Stdout: out, Stderr: errf,
		MountNS: func() error { return boom }}); !errors.Is(err, boom) {
		t.Errorf("MountNS failing: %v", err)
	}
}

// mntNS returns the inode of the mount namespace of the process or task at procDir (0 for
// one that has gone).
func mntNS(t *testing.T, procDir string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(procDir+"/ns/mnt", &st); err != nil {
		return 0
	}
	return st.Ino
}
