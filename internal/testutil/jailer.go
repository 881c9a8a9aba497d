package testutil

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// EnvJailerBin names the real jailer binary that TestRealJail... tests use, with the
// firecracker of the same release in SMARTVM_FIRECRACKER_BIN.
const EnvJailerBin = "SMARTVM_JAILER_BIN"

// JailerBins returns the real jailer (SMARTVM_JAILER_BIN) and firecracker
// (SMARTVM_FIRECRACKER_BIN), or skips the test with the reason it cannot run: a variable
// unset, -short, or not root (the jailer needs root). It does not need /dev/kvm: firecracker
// serves its API without KVM, which is enough to check the jail; a test that boots a guest
// calls RequiresKVM too.
func JailerBins(t testing.TB) (jailer, firecracker string) {
	t.Helper()
	jailer, firecracker = os.Getenv(EnvJailerBin), os.Getenv(EnvFirecrackerBin)
	if jailer == "" || firecracker == "" {
		t.Skipf("needs a real jailer and firecracker of one release: set %s and %s to run this test", EnvJailerBin, EnvFirecrackerBin)
	}
	if testing.Short() {
		t.Skip("needs a real jailer; skipped under -short")
	}
	for _, bin := range []string{jailer, firecracker} {
		if st, err := os.Stat(bin); err != nil || st.IsDir() {
			t.Fatalf("%s is not a file: %v", bin, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the jailer chroots, makes device nodes and changes its uid")
	}
	return jailer, firecracker
}

// HardLink is Link for programs that resolve their executable's path, as the jailer does
// (it names the jail after the file it finds): it makes the running test binary available
// as name through a hard link (a copy across filesystems) in a temporary directory, and
// returns its path.
func HardLink(t testing.TB, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("locate test binary: %v", err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.Link(self, p); err == nil {
		return p
	}
	b, err := os.ReadFile(self)
	if err == nil {
		err = os.WriteFile(p, b, 0o755)
	}
	if err != nil {
		t.Fatalf("copy test binary as %s: %v", name, err)
	}
	return p
}

// GoneWithin fails the test unless process pid, started at startTime (field 22 of its stat), ends
// within d; it kills a survivor with SIGKILL so the test leaves nothing running. It returns
// how long the end took.
func GoneWithin(t testing.TB, pid int, startTime uint64, d time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		if !running(pid, startTime) {
			return time.Since(t0)
		}
		if time.Since(t0) > d {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d still runs %v later", pid, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// running reports whether pid runs (not a zombie) with startTime, field 22 of its stat.
func running(pid int, startTime uint64) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:])
	if len(f) < 20 || f[0][0] == 'Z' || f[0][0] == 'X' {
		return false
	}
	st, err := strconv.ParseUint(string(f[19]), 10, 64)
	return err == nil && st == startTime
}
