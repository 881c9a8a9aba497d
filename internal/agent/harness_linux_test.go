package agent

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/testutil"
)

// nsInitMain is the test binary run as "agent-nsinit ROOTFS ARGS...": PID 1 of new PID,
// mount, UTS and network namespaces. It keeps its mounts from reaching the host, enters ROOTFS
// and runs the agent there (in this process, so as PID 1), with the host name a booted
// kernel starts with, "(none)".
func nsInitMain(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: agent-nsinit ROOTFS [AGENT-ARGS...]")
		return 2
	}
	if err := unix.Sethostname([]byte("(none)")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := enterRoot(args[0], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return Main(args[1:])
}

// enterRoot makes this mount namespace's mounts private, so that none reaches the host, calls
// mount (if not nil) to mount what the new root needs, and makes dir the root and the working
// directory.
func enterRoot(dir string, mount func() error) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if mount != nil {
		if err := mount(); err != nil {
			return err
		}
	}
	if err := unix.Chroot(dir); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}

// busybox is the static busybox the rootfs is made of (apt-get install busybox-static).
const busybox = "/bin/busybox"

// makeRootfs builds a small root file system in a temporary directory: a static busybox with
// its applets in /bin, /etc/passwd and /etc/group with root and "tester" (uid 1000).
func makeRootfs(t *testing.T) string {
	t.Helper()
	applets := busyboxApplets(t)
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "root", "home/tester", "data", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range applets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n",
		"etc/group":  "root:x:0:\nwheel:x:10:tester\ntester:x:1000:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(root, "home/tester"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	return root
}

// busyboxApplets returns the applets of the static busybox, other than busybox itself, and
// skips the test without one.
func busyboxApplets(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		t.Skipf("needs a static busybox at %s (apt-get install busybox-static): %v", busybox, err)
	}
	if interp, err := elfInterpreter(busybox); err != nil || interp != "" {
		t.Skipf("%s is not a static busybox (apt-get install busybox-static): interpreter %q, %v", busybox, interp, err)
	}
	return slices.DeleteFunc(strings.Fields(string(out)), func(a string) bool { return a == "busybox" })
}

// elfInterpreter returns the program interpreter (PT_INTERP) of an ELF executable, "" for a
// static one.
func elfInterpreter(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", err
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", nil
}

// nsAgent is an agent running as PID 1 in namespaces of its own.
type nsAgent struct {
	rootfs string
	cmd    *exec.Cmd
	output *testutil.SyncBuffer
	client *agentwire.Client
	done   chan struct{}
}

// startNSAgent starts the agent as PID 1 in rootfs with extra agent arguments, listening on
// rootfs/agent.sock, and waits until it answers. Root only.
func startNSAgent(t *testing.T, rootfs string, args ...string) *nsAgent {
	t.Helper()
	argv := append([]string{rootfs, "--listen", "unix:/agent.sock", "--log-level", "debug"}, args...)
	a := startNS(t, "agent-nsinit", argv, func(int) string { return filepath.Join(rootfs, "agent.sock") })
	a.rootfs = rootfs
	return a
}

// startNS runs the test binary's helper with argv as PID 1 of new PID, mount, UTS and network
// namespaces, expecting it to become an agent that listens on the Unix socket sock(pid) (pid
// is the helper's, as the host sees it), and waits until the agent answers as PID 1. Root only.
func startNS(t *testing.T, helper string, argv []string, sock func(pid int) string) *nsAgent {
	t.Helper()
	testutil.RequiresRoot(t)
	a := &nsAgent{output: &testutil.SyncBuffer{}, done: make(chan struct{})}
	a.cmd = exec.Command(testutil.Link(t, helper), argv...)
	a.cmd.Stdout, a.cmd.Stderr = a.output, a.output
	a.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start the agent: %v", err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
		if t.Failed() {
			t.Logf("agent output:\n%s", a.output.String())
		}
	})
	dial, err := agentwire.ParseAddr("unix:" + sock(a.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	a.client = agentwire.NewClient(dial)
	t.Cleanup(func() { a.client.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		h, err := a.client.Health(ctx)
		cancel()
		if err == nil {
			if !h.PID1 {
				t.Fatalf("the agent does not run as PID 1: %+v", h)
			}
			return a
		}
		select {
		case <-a.done:
			t.Fatalf("the agent exited: %v\n%s", a.cmd.ProcessState, a.output.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not answer within 30s: %v\n%s", err, a.output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// run runs args in the agent and returns stdout, stderr and the exit status.
func (a *nsAgent) run(t *testing.T, start agentwire.ExecStart, stdin string) (string, string, agentwire.ExitStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	stdio := agentwire.ExecIO{Stdout: &stdout, Stderr: &stderr}
	if stdin != "" {
		stdio.Stdin = strings.NewReader(stdin)
	}
	p, err := a.client.Exec(ctx, start, stdio)
	if err != nil {
		t.Fatalf("exec %q: %v", start.Args, err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatalf("exec %q: %v", start.Args, err)
	}
	return stdout.String(), stderr.String(), st
}
