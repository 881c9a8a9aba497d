package testutil

import (
	"os"
	"testing"
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
