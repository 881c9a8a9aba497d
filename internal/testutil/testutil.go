// Package testutil holds helpers shared by smartvm's tests: skip helpers for tests that need
// real components, a TestMain entry point that lets a test binary stand in for other programs
// (the fake firecracker, the smartvm CLI) when it is executed under their names, checks that
// a test leaves no goroutines, child processes or files behind (CheckLeaks, NoFilesUnder),
// golden-file comparison with an -update flag (Golden), a buffer a child process may write
// while the test reads it (SyncBuffer), and a network namespace of the test's own
// (EnterNetns).
package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EnvFirecrackerBin names the real Firecracker binary that TestReal... tests use.
const EnvFirecrackerBin = "SMARTVM_FIRECRACKER_BIN"

// Main is a TestMain body. When the test binary was executed under one of the names in calls
// (its base name, as a symlink created by Link), it runs that function with the program's
// arguments and exits with its result. Otherwise it runs the tests.
func Main(m *testing.M, calls map[string]func(args []string) int) {
	if fn, ok := calls[filepath.Base(os.Args[0])]; ok {
		os.Exit(fn(os.Args[1:]))
	}
	// Under -race every process that exits 0 first sleeps a second (atexit_sleep_ms). The
	// stand-ins this binary starts have nothing to report by then, so let them exit at once.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	os.Exit(m.Run())
}

// Link makes the running test binary executable under name: it creates a symlink called name
// in a temporary directory and returns its path. The test binary's TestMain must pass name to
// Main. The directory is removed when the test ends.
func Link(t testing.TB, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("locate test binary: %v", err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(self, p); err != nil {
		t.Fatalf("link test binary as %s: %v", name, err)
	}
	return p
}

// FirecrackerBin returns the real Firecracker binary named by SMARTVM_FIRECRACKER_BIN, or
// skips the test with the reason it cannot run: the variable unset, -short, the binary
// missing, or /dev/kvm not usable.
func FirecrackerBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(EnvFirecrackerBin)
	if bin == "" {
		t.Skipf("needs a real Firecracker: set %s to a firecracker binary to run this test", EnvFirecrackerBin)
	}
	if testing.Short() {
		t.Skip("needs a real Firecracker and KVM; skipped under -short")
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		t.Fatalf("%s=%s is not a file: %v", EnvFirecrackerBin, bin, err)
	}
	RequiresKVM(t)
	return bin
}

// RequiresKVM skips the test unless /dev/kvm can be opened for reading and writing.
func RequiresKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("needs read/write access to /dev/kvm: %v", err)
	}
	f.Close()
}

// RequiresRoot skips the test unless it runs as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	}
}
