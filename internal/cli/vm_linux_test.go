package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// vmEnv is a CLI environment for VM tests: firecracker fc, a private runtime root and base
// image cache, and the test binary linked as smartvm for the detached supervisor.
func vmEnv(t *testing.T, fc string) cliEnv {
	t.Helper()
	env := newEnv(t)
	env[envFirecrackerBin] = fc
	env[envRuntimeDir] = t.TempDir()
	env[envBaseImageDir] = t.TempDir()
	env[testSelf] = testutil.Link(t, "smartvm")
	// A private TMPDIR (inherited by the supervisor) for the hello guest's kernel file, so
	// the check for leftovers sees only this test's.
	t.Setenv("TMPDIR", t.TempDir())
	t.Cleanup(func() { checkNothingLeft(t, env) })
	return env
}

// bootArgs boots the test guest in mode.
func bootArgs(mode string) string { return testguest.BootArgs(mode) }

// psEntry is the part of `ps --json` the tests read.
type psEntry struct {
	Name       string    `json:"name"`
	State      string    `json:"state"`
	PID        int       `json:"pid"`
	APISocket  string    `json:"api_socket"`
	RuntimeDir string    `json:"runtime_dir"`
	VCPUs      int       `json:"vcpus"`
	MemoryMiB  int       `json:"memory_mib"`
	Image      string    `json:"image"`
	GuestIP    string    `json:"guest_ip"`
	Created    time.Time `json:"created"`
}

func (e cliEnv) ps(t *testing.T) []psEntry {
	t.Helper()
	r := e.run(t, "ps", "--json").ok(t)
	var out []psEntry
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("ps --json: %v\n%s", err, r.stdout)
	}
	return out
}

// psOne returns the only VM ps lists, which must be called name.
func (e cliEnv) psOne(t *testing.T, name string) psEntry {
	t.Helper()
	list := e.ps(t)
	if len(list) != 1 || list[0].Name != name {
		t.Fatalf("ps lists %+v, want only %s", list, name)
	}
	return list[0]
}

// processAlive reports whether pid runs (a zombie has ended).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// processExists reports whether pid exists, even as a zombie.
func processExists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// supervisorPID returns the pid of the detached VM's supervisor: the owner its state records,
// which must be a running smartvm (a test never signals a pid that may have been reused).
func supervisorPID(t *testing.T, vm psEntry) int {
	t.Helper()
	pid := int(stateOf(t, vm)["owner_pid"].(float64))
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "smartvm" {
		t.Fatalf("owner pid %d of vm %s is %q, not a smartvm supervisor", pid, vm.Name, comm)
	}
	return pid
}

// parentPID reads the parent of pid from /proc.
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

// assertGone checks that a VM's process, socket and runtime directory are gone.
func assertGone(t *testing.T, vm psEntry) {
	t.Helper()
	if processAlive(vm.PID) {
		t.Errorf("vm %s: firecracker (pid %d) still runs", vm.Name, vm.PID)
	}
	for _, p := range []string{vm.APISocket, vm.RuntimeDir} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("vm %s: %s is still there (%v)", vm.Name, p, err)
		}
	}
}

// checkNothingLeft fails the test if the runtime root still holds a VM directory or a hello
// guest kernel is left in the temporary directory.
func checkNothingLeft(t *testing.T, env cliEnv) {
	t.Helper()
	vms, err := os.ReadDir(filepath.Join(env[envRuntimeDir], "vms"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Error(err)
	}
	for _, v := range vms {
		t.Errorf("runtime root still holds vms/%s", v.Name())
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "smartvm-hello-*")); len(left) > 0 {
		t.Errorf("hello guest kernels left behind: %v", left)
	}
}

// testRunHello: run --image hello prints the greeting and exits 0.
func testRunHello(t *testing.T, env cliEnv) {
	r := env.run(t, "run", "--image", "hello").ok(t)
	if r.stdout != testguest.HelloLine+"\n" {
		t.Errorf("run --image hello printed %q, want the greeting", r.stdout)
	}
	if len(env.ps(t)) != 0 {
		t.Error("the hello VM is still listed after it ended")
	}
}

// testDetachedLifecycle: run -d, ps, logs, pause, resume, stop; then run -d again, SIGKILL
// the supervisor, and check that the next command leaves nothing behind.
func testDetachedLifecycle(t *testing.T, env cliEnv) {
	r := env.run(t, "run", "-d", "--rm", "--name", "det1", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCounter)).ok(t)
	if r.stdout != "det1\n" {
		t.Fatalf("run -d printed %q, want the name", r.stdout)
	}
	vm := env.psOne(t, "det1")
	if vm.State != "Running" || vm.PID <= 0 || vm.Image != "hello" || vm.VCPUs != 1 || vm.MemoryMiB != 512 {
		t.Errorf("ps --json: %+v", vm)
	}
	for _, p := range []string{vm.APISocket, vm.RuntimeDir} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("ps --json names %s: %v", p, err)
		}
	}
	if ppid := parentPID(t, vm.PID); ppid == os.Getpid() {
		t.Errorf("firecracker is a child of the test process, not of a supervisor")
	}
	waitLogs(t, env, "det1", testguest.TickLine(1))

	if r := env.run(t, "pause", "det1").ok(t); r.stdout != "det1\n" {
		t.Errorf("pause printed %q", r.stdout)
	}
	if vm := env.psOne(t, "det1"); vm.State != "Paused" {
		t.Errorf("state after pause: %s", vm.State)
	}
	if r := env.run(t, "pause", "det1").ok(t); r.stderr != "vm det1 is paused already\n" || r.stdout != "det1\n" {
		t.Errorf("pausing a paused vm printed %q on stderr, %q on stdout", r.stderr, r.stdout)
	}
	env.run(t, "resume", "det1").ok(t)
	if vm := env.psOne(t, "det1"); vm.State != "Running" {
		t.Errorf("state after resume: %s", vm.State)
	}
	if r := env.run(t, "resume", "det1").ok(t); r.stderr != "vm det1 is running already\n" {
		t.Errorf("resuming a running vm printed %q on stderr", r.stderr)
	}
	if r := env.run(t, "stop", "det1").ok(t); r.stdout != "det1\n" {
		t.Errorf("stop printed %q", r.stdout)
	}
	assertGone(t, vm)
	env.run(t, "stop", "det1").fails(t, ExitError, `no running vm is called "det1"`)

	env.run(t, "run", "-d", "--rm", "--name", "det2", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	vm = env.psOne(t, "det2")
	supervisor := supervisorPID(t, vm)
	if err := syscall.Kill(supervisor, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Firecracker dies with its supervisor (parent-death signal); the next command reaps.
	waitDead(t, vm.PID, supervisor)
	if r := env.run(t, "ps").ok(t); strings.Count(r.stdout, "\n") != 1 || r.stderr != "" {
		t.Errorf("ps after the supervisor was killed:\n%s%s", r.stdout, r.stderr)
	}
	assertGone(t, vm)
}

// waitDead waits until firecracker (pid fc) and its supervisor have died. The parent-death
// signal reaches Firecracker as soon as the supervisor's spawning thread dies, and the
// supervisor's lock on the VM is released only when its last thread has: the supervisor (a
// child of this test) is gone once it is reaped.
func waitDead(t *testing.T, fc, supervisor int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(fc) || processExists(supervisor) {
		if time.Now().After(deadline) {
			t.Fatalf("firecracker (pid %d) or its supervisor (pid %d) still runs", fc, supervisor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLogs waits until `logs NAME` shows want.
func waitLogs(t *testing.T, env cliEnv, name, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := env.run(t, "logs", name).ok(t)
		if strings.Contains(r.stdout, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs %s never showed %q:\n%s", name, want, r.stdout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRealRunHello(t *testing.T) {
	testutil.CheckLeaks(t)
	testRunHello(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

func TestRealDetachedLifecycle(t *testing.T) {
	testutil.CheckLeaks(t)
	testDetachedLifecycle(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

func TestRealDoctor(t *testing.T) {
	env := vmEnv(t, testutil.FirecrackerBin(t))
	env["PATH"] = os.Getenv("PATH")
	r := env.run(t, "doctor", "--json")
	var rep doctorReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r.stdout)
	}
	hello := rep.Checks[len(rep.Checks)-1]
	if hello.Name != "hello guest" || hello.Status != checkOK || hello.DurationMS <= 0 {
		t.Errorf("hello check: %+v\n%s", hello, r.stdout)
	}
}

// waitOutput waits until buf shows want.
func waitOutput(t *testing.T, buf *testutil.SyncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(buf.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never showed %q:\n%s", want, buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testForegroundStop: a foreground VM stops gracefully when ctx ends (SIGINT or SIGTERM in
// main) and when the escape sequence is typed; run exits 0 and leaves nothing.
func testForegroundStop(t *testing.T, env cliEnv) {
	t.Run("signal", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var out, errOut testutil.SyncBuffer
		done := make(chan result, 1)
		go func() {
			done <- env.runIO(ctx, strings.NewReader(""), &out, &errOut, "run", "--name", "fg-sig", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCounter))
		}()
		waitOutput(t, &out, testguest.TickLine(1))
		vm := env.psOne(t, "fg-sig")
		cancel()
		r := <-done
		r.ok(t)
		assertGone(t, vm)
	})
	t.Run("escape", func(t *testing.T) {
		in, typed := io.Pipe()
		defer typed.Close()
		var out, errOut testutil.SyncBuffer
		done := make(chan result, 1)
		go func() {
			done <- env.runIO(t.Context(), in, &out, &errOut, "run", "--name", "fg-esc", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD))
		}()
		waitOutput(t, &out, testguest.ReadyLine)
		vm := env.psOne(t, "fg-esc")
		if _, err := typed.Write([]byte("ls\n\x1dq\n")); err != nil {
			t.Fatal(err)
		}
		r := <-done
		r.ok(t)
		assertGone(t, vm)
	})
}

// testForegroundFailure: a VM whose Firecracker fails makes run exit 1 with one message.
func testForegroundFailure(t *testing.T, env cliEnv) {
	notELF := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(notELF, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := env.run(t, "run", "--kernel", notELF)
	r.fails(t, ExitError, "start vm")
	if len(env.ps(t)) != 0 {
		t.Error("a failed start left a VM listed")
	}
}

func TestRealForegroundStop(t *testing.T) {
	testutil.CheckLeaks(t)
	testForegroundStop(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

func TestRealForegroundFailure(t *testing.T) {
	testutil.CheckLeaks(t)
	testForegroundFailure(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

// BenchmarkRealRunHello measures `smartvm run --image hello` in-process with a real
// Firecracker: from the command line to the guest's greeting printed and everything removed.
func BenchmarkRealRunHello(b *testing.B) {
	fc := testutil.FirecrackerBin(b)
	env := cliEnv{envFirecrackerBin: fc, envRuntimeDir: b.TempDir(), envBaseImageDir: b.TempDir(), "HOME": b.TempDir()}
	for b.Loop() {
		var out, errOut testutil.SyncBuffer
		r := env.runIO(b.Context(), strings.NewReader(""), &out, &errOut, "run", "--image", "hello")
		if r.code != 0 || r.stdout != testguest.HelloLine+"\n" {
			b.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	}
}
