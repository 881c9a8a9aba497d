package proc

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testutil"
)

// The main goroutine stays on the process's main thread, so that the "leader-exit" helper
// can end that thread alone.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{
		"proc-helper": helperMain,
		"proc-owner":  ownerMain,
	})
}

// helperMain is a stand-in child: "exit N", "print TEXT" (TEXT on stdout and stderr, then
// exit 0), "copy" (stdin to stdout until EOF), "sleep" (until killed), "ignore-term"
// (sleep, ignoring SIGTERM) or "leader-exit" (end the main thread alone).
func helperMain(args []string) int {
	switch args[0] {
	case "copy":
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			return 1
		}
		return 0
	case "exit":
		n, _ := strconv.Atoi(args[1])
		return n
	case "print":
		os.Stdout.WriteString(args[1] + "\n")
		os.Stderr.WriteString("err:" + args[1] + "\n")
		return 0
	case "leader-exit":
		return testutil.LeaderExitMain(args)
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fallthrough
	case "sleep":
		os.Stdout.WriteString("ready\n")
		time.Sleep(time.Hour)
	}
	return 2
}

// ownerMain starts an owned "sleep" child from a goroutine that then returns, prints the
// child's pid, and sleeps until it is killed.
func ownerMain(args []string) int {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 1
	}
	res := make(chan *Process)
	go func() {
		p, err := Start(Config{Path: args[0], Args: []string{"sleep"}, Stdout: devnull, Stderr: devnull})
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(1)
		}
		res <- p
	}()
	p := <-res
	os.Stdout.WriteString(strconv.Itoa(p.PID()) + "\n")
	time.Sleep(time.Hour)
	return 0
}

// files returns stdout and stderr files in a temporary directory.
func files(t *testing.T) (stdout, stderr *os.File) {
	t.Helper()
	dir := t.TempDir()
	var fs [2]*os.File
	for i, name := range []string{"stdout", "stderr"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fs[i] = f
	}
	return fs[0], fs[1]
}

func start(t *testing.T, detached bool, args ...string) (*Process, *os.File) {
	t.Helper()
	out, errf := files(t)
	p, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: args, Stdout: out, Stderr: errf, Detached: detached})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Signal(syscall.SIGKILL)
		<-p.Done()
	})
	return p, out
}

func waitDone(t *testing.T, p *Process) Status {
	t.Helper()
	select {
	case <-p.Done():
		return p.Status()
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d did not end", p.PID())
		return Status{}
	}
}

// waitOutput waits until the file holds want.
func waitOutput(t *testing.T, f *os.File, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(f.Name())
		if strings.Contains(string(b), want) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never held %q", f.Name(), want)
}

func TestStartExitStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		sig  syscall.Signal
		want Status
	}{
		{"zero", []string{"exit", "0"}, 0, Status{Known: true, Code: 0}},
		{"code", []string{"exit", "3"}, 0, Status{Known: true, Code: 3}},
		{"sigkill", []string{"sleep"}, syscall.SIGKILL, Status{Known: true, Code: -1, Signal: "SIGKILL"}},
		{"sigterm", []string{"sleep"}, syscall.SIGTERM, Status{Known: true, Code: -1, Signal: "SIGTERM"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, out := start(t, false, tc.args...)
			if p.StartTime() == 0 {
				t.Fatal("no start time")
			}
			if tc.sig != 0 {
				waitOutput(t, out, "ready")
				if err := p.Signal(tc.sig); err != nil {
					t.Fatal(err)
				}
			}
			got := waitDone(t, p)
			if got != tc.want {
				t.Fatalf("status %+v, want %+v", got, tc.want)
			}
			if got.Success() != (tc.want.Code == 0 && tc.want.Signal == "") {
				t.Fatalf("Success() = %v for %v", got.Success(), got)
			}
			if err := p.Signal(syscall.SIGKILL); !errors.Is(err, os.ErrProcessDone) {
				t.Fatalf("signal after exit: %v, want ErrProcessDone", err)
			}
		})
	}
}

func TestStartOutputToFiles(t *testing.T) {
	t.Parallel()
	out, errf := files(t)
	p, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"print", "hi"}, Stdout: out, Stderr: errf})
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	for f, want := range map[*os.File]string{out: "hi\n", errf: "err:hi\n"} {
		b, err := os.ReadFile(f.Name())
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", f.Name(), b, err, want)
		}
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	out, errf := files(t)
	if _, err := Start(Config{Path: filepath.Join(t.TempDir(), "missing"), Stdout: out, Stderr: errf}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing binary: %v, want ErrNotExist", err)
	}
	if _, err := Start(Config{Path: "/bin/true"}); err == nil {
		t.Error("no stdio files: want an error")
	}
}

func TestStartStdin(t *testing.T) {
	t.Parallel()
	out, errf := files(t)
	in, err := os.Create(filepath.Join(t.TempDir(), "stdin"))
	if err != nil {
		t.Fatal(err)
	}
	in.WriteString("to the child\n")
	in.Seek(0, io.SeekStart)
	p, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"copy"}, Stdin: in, Stdout: out, Stderr: errf})
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st := waitDone(t, p); !st.Success() {
		t.Fatalf("status %v", st)
	}
	if b, _ := os.ReadFile(out.Name()); string(b) != "to the child\n" {
		t.Errorf("stdout %q", b)
	}

	// Without Stdin the child reads /dev/null: EOF at once.
	out2, errf2 := files(t)
	p, err = Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"copy"}, Stdout: out2, Stderr: errf2})
	if err != nil {
		t.Fatal(err)
	}
	if st := waitDone(t, p); !st.Success() {
		t.Fatalf("status without stdin %v", st)
	}
}

func TestStartAround(t *testing.T) {
	t.Parallel()
	for _, detached := range []bool{false, true} {
		out, errf := files(t)
		calls := 0
		p, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"exit", "0"}, Stdout: out, Stderr: errf, Detached: detached,
			Around: func(start func() error) error { calls++; return start() }})
		if err != nil {
			t.Fatal(err)
		}
		if st := waitDone(t, p); !st.Success() || calls != 1 {
			t.Errorf("detached=%v: status %v, Around called %d times", detached, st, calls)
		}
	}

	// Around's error fails Start; a child it started is killed and reaped.
	boom := errors.New("boom")
	out, errf := files(t)
	if _, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"exit", "0"}, Stdout: out, Stderr: errf,
		Around: func(func() error) error { return boom }}); !errors.Is(err, boom) {
		t.Errorf("Around failing before the fork: %v", err)
	}
}

// TestStartAroundFailsAfterFork: a child started before Around failed is killed and reaped.
func TestStartAroundFailsAfterFork(t *testing.T) {
	testutil.CheckLeaks(t) // no child left
	boom := errors.New("boom")
	out, errf := files(t)
	forked := false
	_, err := Start(Config{Path: testutil.Link(t, "proc-helper"), Args: []string{"sleep"}, Stdout: out, Stderr: errf,
		Around: func(start func() error) error {
			if err := start(); err != nil {
				return err
			}
			forked = true
			return boom
		}})
	if !errors.Is(err, boom) || !forked {
		t.Fatalf("Around failing after the fork: %v (forked %v)", err, forked)
	}
}

func TestProcessGroupAndSession(t *testing.T) {
	t.Parallel()
	for _, detached := range []bool{false, true} {
		p, _ := start(t, detached, "sleep")
		pgid, sid := statIDs(t, p.PID())
		if pgid != p.PID() {
			t.Errorf("detached=%v: pgid %d, want own group %d", detached, pgid, p.PID())
		}
		if got := sid == p.PID(); got != detached {
			t.Errorf("detached=%v: session leader = %v", detached, got)
		}
	}
}

// statIDs returns the process group and session ids (fields 5 and 6) of pid.
func statIDs(t *testing.T, pid int) (pgid, sid int) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	pgid, _ = strconv.Atoi(f[2])
	sid, _ = strconv.Atoi(f[3])
	return pgid, sid
}

// TestOwnedChildDiesWithOwner kills an owner process with SIGKILL and expects its owned
// child, started from a goroutine that has since returned, to be gone within a second.
func TestOwnedChildDiesWithOwner(t *testing.T) {
	t.Parallel()
	owner := exec.Command(testutil.Link(t, "proc-owner"), testutil.Link(t, "proc-helper"))
	stdout, err := owner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	owner.Stderr = os.Stderr
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Process.Kill(); owner.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read child pid: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	st, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Give the owner's goroutines time to move between threads, as a long-lived program's do.
	time.Sleep(50 * time.Millisecond)
	owner.Process.Kill()
	owner.Wait()
	deadline := time.Now().Add(time.Second)
	for {
		alive, err := Alive(pid, st)
		if err != nil {
			t.Fatal(err)
		}
		if !alive {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d outlived its owner by more than 1s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAttach(t *testing.T) {
	t.Parallel()
	child, out := start(t, true, "sleep")
	waitOutput(t, out, "ready")
	p, err := Attach(child.PID(), child.StartTime(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	if p.Exited() || p.StartTime() != child.StartTime() {
		t.Fatalf("attached: exited %v, start time %d", p.Exited(), p.StartTime())
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	got := waitDone(t, p)
	if got.Known || got.Code != -1 {
		t.Fatalf("attached status %+v, want unknown", got)
	}
	if s := waitDone(t, child); s.Signal != "SIGTERM" {
		t.Fatalf("child status %+v", s)
	}
	if err := p.Signal(syscall.SIGKILL); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal after exit: %v", err)
	}
	if err := p.Release(); err != nil {
		t.Fatalf("second release: %v", err)
	}
}

func TestAttachRefusesWrongProcess(t *testing.T) {
	t.Parallel()
	child, _ := start(t, false, "sleep")
	if _, err := Attach(child.PID(), child.StartTime()+1, nil); !errors.Is(err, ErrPIDReused) || !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("wrong start time: %v, want ErrPIDReused and ErrProcessDone", err)
	}
	child.Signal(syscall.SIGKILL)
	waitDone(t, child)
	if _, err := Attach(child.PID(), child.StartTime(), nil); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("ended process: %v, want ErrProcessDone", err)
	}
	if alive, err := Alive(child.PID(), child.StartTime()); alive || err != nil {
		t.Errorf("Alive after exit = %v, %v", alive, err)
	}
	for _, pid := range []int{0, -1} {
		if _, err := Attach(pid, 0, nil); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("Attach(%d): %v, want ErrProcessDone", pid, err)
		}
	}
}

func TestAttachRelease(t *testing.T) {
	t.Parallel()
	child, _ := start(t, false, "sleep")
	p, err := Attach(child.PID(), child.StartTime(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Release(); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGKILL); err == nil {
		t.Fatal("signal through a released pidfd succeeded")
	}
	child.Signal(syscall.SIGKILL)
	waitDone(t, child)
	select {
	case <-p.Done():
		t.Fatal("released process reported an exit")
	case <-time.After(20 * time.Millisecond):
	}
}

func TestAliveSelf(t *testing.T) {
	t.Parallel()
	st, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if alive, err := Alive(os.Getpid(), st); !alive || err != nil {
		t.Fatalf("Alive(self) = %v, %v", alive, err)
	}
	if _, err := StartTime(0); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("StartTime(0): %v", err)
	}
}

func TestParseStat(t *testing.T) {
	t.Parallel()
	rest := " 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000 100"
	tests := []struct {
		line    string
		start   uint64
		state   byte
		wantErr bool
	}{
		{"42 (firecracker) S" + rest, 12345, 'S', false},
		{"42 (a) b) (c) Z" + rest, 12345, 'Z', false},
		{"42 (x y z) R" + rest, 12345, 'R', false},
		{"42 firecracker S 1 2", 0, 0, true},
		{"42 (fc) S 1 2 3", 0, 0, true},
		{"42 (fc) S" + strings.Replace(rest, "12345", "nan", 1), 0, 0, true},
	}
	for _, tc := range tests {
		st, state, err := parseStat([]byte(tc.line))
		if (err != nil) != tc.wantErr || st != tc.start || state != tc.state {
			t.Errorf("parseStat(%q) = %d, %q, %v", tc.line, st, state, err)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("42 (firecracker) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000"))
	f.Add([]byte("1 ())) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, _, err := parseStat(b)
		if err != nil && st != 0 {
			t.Fatalf("error with start time %d", st)
		}
	})
}

func TestThreads(t *testing.T) {
	t.Parallel()
	names, err := Threads(os.Getpid())
	if err != nil || len(names) == 0 {
		t.Fatalf("Threads(self) = %v, %v", names, err)
	}
	if _, err := Threads(0); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("Threads(0): %v", err)
	}
}

// TestExiting: a process whose main thread has ended while other threads run is exiting, not
// alive; a running process and an ended one are neither.
func TestExiting(t *testing.T) {
	t.Parallel()
	p, out := start(t, false, "leader-exit")
	waitOutput(t, out, "ready")
	deadline := time.Now().Add(10 * time.Second)
	for {
		alive, err := Alive(p.PID(), p.StartTime())
		if err != nil {
			t.Fatal(err)
		}
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the main thread never ended")
		}
		time.Sleep(time.Millisecond)
	}
	if exiting, err := Exiting(p.PID(), p.StartTime()); !exiting || err != nil {
		t.Fatalf("Exiting with the main thread gone and others running = %v, %v", exiting, err)
	}
	if exiting, _ := Exiting(p.PID(), p.StartTime()+1); exiting {
		t.Error("Exiting with another start time")
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if exiting, err := Exiting(p.PID(), p.StartTime()); exiting || err != nil {
		t.Errorf("Exiting after the end = %v, %v", exiting, err)
	}

	running, _ := start(t, false, "sleep")
	if exiting, err := Exiting(running.PID(), running.StartTime()); exiting || err != nil {
		t.Errorf("Exiting of a running process = %v, %v", exiting, err)
	}
	if exiting, err := Exiting(0, 0); exiting || err != nil {
		t.Errorf("Exiting(0) = %v, %v", exiting, err)
	}
}

// A recorded pid is trusted only when the process matches everything smartvm knows of the
// one it started: its user, its executable and an argument pair.
func TestAttachChecksIdentity(t *testing.T) {
	t.Parallel()
	child, out := start(t, false, "sleep", "--api-sock", "/run/x/api.sock")
	waitOutput(t, out, "ready")
	exe, err := ExePath(child.PID())
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	if exe != self {
		t.Fatalf("ExePath = %s, want the test binary %s", exe, self)
	}
	uid := uint32(os.Getuid())
	good := Identity{UID: uid, Exe: exe, Flag: "--api-sock", Value: "/run/x/api.sock"}
	p, err := Attach(child.PID(), child.StartTime(), &good)
	if err != nil {
		t.Fatalf("matching identity: %v", err)
	}
	p.Release()
	for name, id := range map[string]Identity{
		"uid":   {UID: uid + 1, Exe: exe, Flag: "--api-sock", Value: "/run/x/api.sock"},
		"exe":   {UID: uid, Exe: "/usr/bin/firecracker", Flag: "--api-sock", Value: "/run/x/api.sock"},
		"args":  {UID: uid, Exe: exe, Flag: "--api-sock", Value: "/run/y/api.sock"},
		"value": {UID: uid, Exe: exe, Flag: "/run/x/api.sock", Value: "--api-sock"},
	} {
		if _, err := Attach(child.PID(), child.StartTime(), &id); !errors.Is(err, ErrNotOurs) || errors.Is(err, os.ErrProcessDone) {
			t.Errorf("wrong %s: %v, want ErrNotOurs", name, err)
		}
	}
	if pids := FindByArgs(uid, "--api-sock", "/run/x/api.sock"); len(pids) != 1 || pids[0] != child.PID() {
		t.Errorf("FindByArgs = %v, want [%d]", pids, child.PID())
	}
	if pids := FindByArgs(uid, "--api-sock", "/run/none"); len(pids) != 0 {
		t.Errorf("FindByArgs found %v for an unused socket", pids)
	}
}
