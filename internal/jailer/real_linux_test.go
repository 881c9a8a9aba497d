package jailer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/testutil"
)

// realConfig is a jail for the real binaries under a temporary chroot base, with the
// firecracker copied there under a name the jailer accepts.
func realConfig(t *testing.T, fc, id string) Config {
	t.Helper()
	base := t.TempDir()
	exe := filepath.Join(t.TempDir(), "firecracker")
	b, err := os.ReadFile(fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return Config{ID: id, ExecFile: exe, UID: 61001, GID: 61001, ChrootBase: base, NewPIDNS: true,
		FirecrackerArgs: []string{"--api-sock", "/api.sock"}}
}

func stdio(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	errf, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close(); errf.Close() })
	return out, errf
}

// launch launches cfg's jail, failing the test with the jailer's stderr if it cannot.
func launch(t *testing.T, jailerBin string, cfg Config) *Jail {
	t.Helper()
	out, errf := stdio(t)
	j, err := Launch(jailerBin, cfg, proc.Config{Stdout: out, Stderr: errf})
	if err != nil {
		b, _ := os.ReadFile(errf.Name())
		t.Fatalf("launch: %v\n%s", err, b)
	}
	return j
}

// endJail closes j and removes tr, and fails unless nothing is left under the chroot base.
func endJail(t *testing.T, j *Jail, tr *Tree) {
	t.Helper()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(tr.cfg.Base()); len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
}

func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.Join(strings.Fields(rest), " ")
		}
	}
	t.Fatalf("no %s in status of %d", field, pid)
	return ""
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRealJailProcess(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	for _, newPIDNS := range []bool{true, false} {
		t.Run(fmt.Sprintf("new-pid-ns=%v", newPIDNS), func(t *testing.T) {
			cfg := realConfig(t, fc, "jail-test-1")
			cfg.NewPIDNS = newPIDNS
			j := launch(t, jailerBin, cfg)
			defer j.Close()
			ch := cfg.Chroot()
			waitFile(t, ch.Host("/api.sock"))
			pid := j.Firecracker.PID()
			if got := statusField(t, pid, "Uid"); got != "61001 61001 61001 61001" {
				t.Errorf("Uid = %s", got)
			}
			if got := statusField(t, pid, "Gid"); got != "61001 61001 61001 61001" {
				t.Errorf("Gid = %s", got)
			}
			for _, c := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
				if got := statusField(t, pid, c); got != "0000000000000000" {
					t.Errorf("%s = %s, want none", c, got)
				}
			}
			var root, want syscall.Stat_t
			if err := syscall.Stat("/proc/"+strconv.Itoa(pid)+"/root/", &root); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Stat(ch.Root, &want); err != nil {
				t.Fatal(err)
			}
			if root.Dev != want.Dev || root.Ino != want.Ino {
				t.Errorf("firecracker's root is not the chroot %s", ch.Root)
			}
			ns := strings.Fields(statusField(t, pid, "NSpid"))
			last := ns[len(ns)-1]
			if newPIDNS && last != "1" {
				t.Errorf("NSpid = %v: firecracker is not PID 1 of its namespace", ns)
			}
			if !newPIDNS && (len(ns) != 2 || last == "1") {
				t.Errorf("NSpid = %v: want firecracker in the guard's namespace, under the guard", ns)
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			if alive, _ := proc.Alive(pid, j.Firecracker.StartTime()); alive {
				t.Errorf("firecracker %d outlived Close", pid)
			}
		})
	}
}

// jailOwnerMain is a process that owns a jail: it launches one (jailer, firecracker, chroot
// base from its arguments), prints firecracker's pid and sleeps until killed.
func jailOwnerMain(args []string) int {
	cfg := Config{ID: "jail-owner", ExecFile: args[1], UID: 61002, GID: 61002, ChrootBase: args[2], NewPIDNS: args[3] == "true",
		FirecrackerArgs: []string{"--api-sock", "/api.sock"}}
	j, err := Launch(args[0], cfg, proc.Config{Stdout: os.Stderr, Stderr: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %d\n", j.Firecracker.PID(), j.Firecracker.StartTime())
	select {}
}

func TestRealJailOwnerKilled(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	for _, newPIDNS := range []bool{true, false} {
		t.Run(fmt.Sprintf("new-pid-ns=%v", newPIDNS), func(t *testing.T) {
			cfg := realConfig(t, fc, "jail-owner")
			var stderr bytes.Buffer
			cmd := exec.Command(testutil.Link(t, "jail-owner"), jailerBin, cfg.ExecFile, cfg.ChrootBase, strconv.FormatBool(newPIDNS))
			cmd.Stderr = &stderr
			outp, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var pid int
			var st uint64
			if _, err := fmt.Fscan(outp, &pid, &st); err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("owner: %v\n%s", err, stderr.String())
			}
			if alive, _ := proc.Alive(pid, st); !alive {
				t.Fatalf("firecracker %d is not running", pid)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			took := testutil.GoneWithin(t, pid, st, time.Second)
			t.Logf("jailed firecracker gone %v after its owner's SIGKILL", took)
		})
	}
}

func TestRealJailCgroups(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	l, err := DetectCgroups()
	if err != nil {
		t.Fatal(err)
	}
	v := l.Version()
	lim := Limits{CPUQuotaUS: 50000, MemoryBytes: 512 << 20, Cpuset: "0"}
	settings, err := l.Settings(v, lim)
	if errors.Is(err, ErrCgroupUnsupported) {
		t.Skipf("this host's cgroups (%s) lack a controller: %v", l, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg := realConfig(t, fc, "jail-cgroups")
	cfg.CgroupVersion, cfg.Cgroups, cfg.ParentCgroup = v, settings, "smartvm-test"
	t.Cleanup(func() { RemoveCgroups(context.Background(), l.CgroupDirs(cfg)...) })
	if err := PrepareCgroups(l, cfg); err != nil {
		t.Fatal(err)
	}
	j := launch(t, jailerBin, cfg)
	t.Cleanup(func() { j.Close() })
	t.Logf("cgroup layout %s, version %d, dirs %v", l, v, l.CgroupDirs(cfg))
	if err := l.CheckSettings(cfg); err != nil {
		t.Error(err)
	}
	for _, d := range l.CgroupDirs(cfg) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil || !strings.Contains(" "+strings.Join(strings.Fields(string(b)), " ")+" ", " "+strconv.Itoa(j.Firecracker.PID())+" ") {
			t.Errorf("firecracker %d is not in %s (%q, %v)", j.Firecracker.PID(), d, b, err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := RemoveCgroups(context.Background(), l.CgroupDirs(cfg)...); err != nil {
		t.Fatal(err)
	}
	for _, d := range l.CgroupDirs(cfg) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}
}

func TestRealJailerVersion(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	ctx := t.Context()
	jv, err := Version(ctx, jailerBin)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(fc, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	fv, err := fcapi.ParseVersion(line)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckVersion(jailerBin, jv, fc, fv); err != nil {
		t.Errorf("matching pair refused: %v", err)
	}
	other := os.Getenv("SMARTVM_OTHER_JAILER_BIN")
	if other == "" {
		t.Skip("set SMARTVM_OTHER_JAILER_BIN to a jailer of another release to check the refusal")
	}
	ov, err := Version(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckVersion(other, ov, fc, fv); !errors.Is(err, ErrVersionMismatch) {
		t.Errorf("jailer v%s with firecracker v%s: %v, want ErrVersionMismatch", ov, fv, err)
	}
}

// A whole jail: prepared tree with a placed file and a log, firecracker serving its API on
// the host path of its in-chroot socket, and nothing left after Close and Remove.
func TestRealJailLifecycle(t *testing.T) {
	jailerBin, fc := testutil.JailerBins(t)
	cfg := realConfig(t, fc, "jail-life")
	cfg.ChrootBase = filepath.Join(cfg.ChrootBase, "srv-jailer")
	cfg.FirecrackerArgs = []string{"--api-sock", "/run/api.sock", "--log-path", "/firecracker.log", "--level", "Info"}
	tr, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel"), 0o644)
	if _, err := tr.Place(t.Context(), openFile(t, kernel), kernel, "vmlinux", ReadOnly); err != nil {
		t.Fatal(err)
	}
	if err := tr.CreateFile("firecracker.log"); err != nil {
		t.Fatal(err)
	}
	j := launch(t, jailerBin, cfg)
	sock := tr.Chroot().Host("/run/api.sock")
	c := fcapi.New(sock)
	defer c.Close()
	if err := fcapi.WaitReady(t.Context(), sock, j.Firecracker.Done()); err != nil {
		t.Fatal(err)
	}
	v, err := c.Version(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("jailed firecracker v%s answers on %s", v, sock)
	if err := proc.Check(j.Firecracker.PID(), proc.Identity{UID: cfg.UID, Flag: "--api-sock", Value: "/run/api.sock"}); err != nil {
		t.Errorf("identity: %v", err)
	}
	if exe, err := proc.ExePath(j.Firecracker.PID()); err == nil {
		t.Logf("/proc/pid/exe of the jailed firecracker: %s", exe)
	}
	if b, _ := os.ReadFile(tr.Chroot().Host("/firecracker.log")); !bytes.Contains(b, []byte("Running Firecracker")) {
		t.Errorf("log in the jail: %q", b)
	}
	endJail(t, j, tr)
}
