package jailer

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
	st, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID()) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	_, ns := statusPIDs(st)
	if len(ns) != 2 {
		t.Fatalf("the sleep is not in the guard's namespace: NSpid %v", ns)
	}
	for _, after := range []int{0, p.PID() - 1} {
		if pid, err := g.Member(ns[1], os.Getpid(), after); err != nil || pid != p.PID() {
			t.Errorf("Member(%d, %d, %d) = %d, %v; want %d", ns[1], os.Getpid(), after, pid, err, p.PID())
		}
	}
	if pid, err := g.Member(ns[1], 0, 0); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Member(%d, guard, 0) = %d, %v; want no process: the sleep is not the guard's child", ns[1], pid, err)
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

// The guard program is a well-formed executable whose entry is its code.
func TestGuardImage(t *testing.T) {
	if guardCode == nil {
		t.Skip("no guard program for " + runtime.GOARCH + ": StartGuard clones this process")
	}
	f, err := elf.NewFile(bytes.NewReader(guardImage()))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != elf.ET_EXEC || f.Machine != elf.Machine(guardMachine) || len(f.Progs) != 2 {
		t.Fatalf("type %v machine %v, %d program headers", f.Type, f.Machine, len(f.Progs))
	}
	load := f.Progs[0]
	if load.Type != elf.PT_LOAD || load.Flags != elf.PF_R|elf.PF_X || f.Entry != load.Vaddr+load.Filesz-uint64(len(guardCode)) {
		t.Errorf("load segment %+v, entry %#x", load.ProgHeader, f.Entry)
	}
	if st := f.Progs[1]; st.Type != elf.PT_GNU_STACK || st.Flags&elf.PF_X != 0 {
		t.Errorf("stack segment %+v", st.ProgHeader)
	}
}

// Either way it is started, a guard is the init of a new PID namespace, with every signal
// blocked and no descriptor open, and Close ends it.
func TestGuardProcess(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, clone := range []bool{false, true} {
		t.Run("clone="+strconv.FormatBool(clone), func(t *testing.T) {
			cloneGuardOnly = clone
			defer func() { cloneGuardOnly = false }()
			for _, detached := range []bool{false, true} {
				g, err := StartGuard(detached)
				if err != nil {
					t.Fatal(err)
				}
				// The program blocks its signals once it runs: give it the moment.
				var status []byte
				for i := 0; i < 100 && !bytes.Contains(status, []byte("\nSigBlk:\tfffffffffffbfeff\n")); i++ {
					time.Sleep(10 * time.Millisecond)
					status, _ = os.ReadFile("/proc/" + strconv.Itoa(g.PID()) + "/status")
				}
				_, ns := statusPIDs(status)
				fds, err := os.ReadDir("/proc/" + strconv.Itoa(g.PID()) + "/fd")
				if len(ns) != 2 || ns[1] != 1 || !bytes.Contains(status, []byte("\nSigBlk:\tfffffffffffbfeff\n")) || err != nil || len(fds) != 0 {
					t.Errorf("detached=%t: NSpid %v, %d descriptors (%v), status:\n%s", detached, ns, len(fds), err, status)
				}
				exe, _ := os.Readlink("/proc/" + strconv.Itoa(g.PID()) + "/exe")
				if program := !clone && guardCode != nil; program != strings.Contains(exe, "memfd:smartvm-jail-guard") {
					t.Errorf("detached=%t: the guard runs %s", detached, exe)
				}
				if err := g.Close(); err != nil {
					t.Fatal(err)
				}
				select {
				case <-g.Done():
				default:
					t.Fatal("Close returned before the guard ended")
				}
			}
		})
	}
}

// A guard program the kernel refuses to run is an error execRefused recognises, which makes
// StartGuard clone this process instead.
func TestGuardExecRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if pid, err := execGuard(int(f.Fd()), p[0], false); pid != 0 || !execRefused(err) {
		t.Fatalf("execGuard of /dev/null = %d, %v; want a refusal", pid, err)
	}
}

// An owner that dies before its guard has armed the parent-death signal leaves no guard: the
// guard gets its go-ahead only once it says the signal is armed, and finds the owner's end
// closed instead. The guard here is a stand-in (guardStandIn) that arms the signal only
// once its owner is gone, which a real guard does only when the owner dies in the moment
// between the guard's start and its first instructions.
func TestGuardOwnerDiesBeforeArmed(t *testing.T) {
	testutil.RequiresRoot(t)
	cmd := exec.Command(testutil.Link(t, "guard-owner"))
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		t.Fatalf("the stand-in guard did not report its pid: %v", err)
	}
	st, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	testutil.GoneWithin(t, pid, st, 10*time.Second)
}

// guardOwnerMain starts a guard that runs guardStandIn (this binary, as "jail-guard") and
// waits to be killed.
func guardOwnerMain([]string) int {
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	guardMemfd = func() int { return int(self.Fd()) }
	go func() {
		if _, err := StartGuard(false); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	time.Sleep(time.Hour)
	return 0
}

// guardStandIn is a guard program that arms its parent-death signal only once its owner is
// gone. It reports its pid on its owner's standard output, waits for the owner's end, then
// goes through the guard's steps: arm the signal, say so on fd 3, and read the go-ahead
// there. With a go-ahead it stays (as a guard would, forever); at the end of fd 3 it exits.
func guardStandIn([]string) int {
	self, _ := os.Readlink("/proc/self") // its pid on the host: /proc is the host's
	b, _ := os.ReadFile("/proc/self/status")
	owner, _ := statusPIDs(b)
	stdout, err := os.OpenFile("/proc/"+strconv.Itoa(owner)+"/fd/1", os.O_WRONLY, 0)
	if err != nil {
		return 1
	}
	fmt.Fprintln(stdout, self)
	stdout.Close()
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(owner) + "/stat")
		if err != nil || bytes.Contains(b, []byte(") Z ")) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	unix.Write(3, []byte{1})
	if n, _ := unix.Read(3, make([]byte, 1)); n != 1 {
		return 1
	}
	time.Sleep(time.Hour)
	return 0
}
