package smartvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// waitLong bounds the waits of tests for things that normally take milliseconds.
const waitLong = 20 * time.Second

// testRoot returns a fresh runtime root and, at cleanup, checks that nothing was left in it.
// Register it after testutil.CheckLeaks and before the manager, so it runs after the
// manager's Close.
func testRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rt")
	t.Cleanup(func() { testutil.NoFilesUnder(t, filepath.Join(root, "vms")) })
	return root
}

// newManager returns a manager on root that is closed at cleanup.
func newManager(t *testing.T, root, bin string, opts ...Option) *Manager {
	t.Helper()
	opts = append([]Option{WithRuntimeDir(root), WithFirecrackerBinary(bin), WithStopGracePeriod(200 * time.Millisecond)}, opts...)
	mgr, err := NewManager(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mgr.Close(); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return mgr
}

// guestKernel writes the test guest to a temporary file.
func guestKernel(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "testguest.elf")
	if err := testguest.Write(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestSpec is a small VM running the test guest in mode.
func guestSpec(kernel, mode string) MachineSpec {
	return MachineSpec{Kernel: kernel, BootArgs: testguest.BootArgs(mode), MemoryMiB: 32}
}

func start(t *testing.T, mgr *Manager, spec MachineSpec, opts ...StartOption) *Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	m, err := mgr.Start(ctx, spec, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close vm %s: %v", m.Name(), err)
		}
	})
	return m
}

// console follows a machine's serial console line by line.
type console struct {
	r     io.ReadCloser
	lines chan string
}

func followConsole(t *testing.T, m *Machine) *console {
	t.Helper()
	r, err := m.Console()
	if err != nil {
		t.Fatal(err)
	}
	c := &console{r: r, lines: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { r.Close(); <-done })
	return c
}

// waitLine waits for a line that satisfies match and returns it.
func (c *console) waitLine(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	timeout := time.After(waitLong)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("console ended before %s", what)
			}
			if match(l) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %s on the console within %v", what, waitLong)
		}
	}
}

func (c *console) waitFor(t *testing.T, line string) {
	t.Helper()
	c.waitLine(t, strconv.Quote(line), func(l string) bool { return strings.TrimSpace(l) == line })
}

// nextTick returns the next counter tick on the console.
func (c *console) nextTick(t *testing.T) uint64 {
	t.Helper()
	n, _ := testguest.ParseTick(c.waitLine(t, "a counter tick", func(l string) bool {
		_, ok := testguest.ParseTick(l)
		return ok
	}))
	return n
}

// drain returns the lines that arrive within d.
func (c *console) drain(d time.Duration) []string {
	var out []string
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return out
			}
			out = append(out, l)
		case <-timeout:
			return out
		}
	}
}

func wait(t *testing.T, m *Machine) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	err := m.Wait(ctx)
	if ctx.Err() != nil {
		t.Fatalf("vm %s did not end within %v", m.Name(), waitLong)
	}
	return err
}

// processGone waits up to d for process pid to be gone (or a zombie) and reports whether it is.
func processGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runOwner starts a process that owns a VM (ownerMain) and returns it with the firecracker
// pid it printed.
func runOwner(t *testing.T, a ownerArgs) (*exec.Cmd, int) {
	t.Helper()
	b, _ := json.Marshal(a)
	cmd := exec.Command(testutil.Link(t, "smartvm-owner"), string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("owner printed no pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("owner printed %q", line)
	}
	if a.Exit {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("owner: %v", err)
		}
		exited = true
	}
	return cmd, pid
}

// killOwner kills the owner process with SIGKILL and reaps it.
func killOwner(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// startMany starts n VMs at once, the i-th described by spec(i), and fails the test unless
// all start.
func startMany(t *testing.T, mgr *Manager, n int, spec func(i int) MachineSpec) []*Machine {
	t.Helper()
	ms := make([]*Machine, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			ms[i], errs[i] = mgr.Start(ctx, spec(i))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, m := range ms {
				m.Close()
			}
			t.Fatalf("vm %d: %v", i, err)
		}
	}
	return ms
}

// checkGone fails the test unless the VMs' processes and directories are gone and the root
// holds no VM.
func checkGone(t *testing.T, root string, ms []*Machine) {
	t.Helper()
	for _, m := range ms {
		if !processGone(m.PID(), 0) {
			t.Errorf("vm %s: pid %d still there", m.Name(), m.PID())
		}
		if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("vm %s: runtime dir left: %v", m.Name(), err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "vms")); len(ents) != 0 {
		t.Errorf("left in the root: %v", ents)
	}
}

// detachedVM has a helper process start a detached VM called name and exit, and returns the
// root, the (fake) firecracker binary and the VM's pid. The VM is killed at cleanup.
func detachedVM(t *testing.T, name, mode string) (root, bin string, pid int) {
	t.Helper()
	root = testRoot(t)
	bin = testutil.Link(t, "firecracker")
	spec := guestSpec(guestKernel(t), mode)
	spec.Name = name
	_, pid = runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec, Detached: true, Exit: true})
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return root, bin, pid
}
