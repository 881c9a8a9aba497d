package testutil

import (
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// update is the -update flag of every test binary that imports this package. A test package
// that imports testutil must not define its own -update flag (the flag package would panic);
// it can read this one through Update.
var update = flag.Bool("update", false, "rewrite the testdata/*.golden files with the output the tests produce")

// Update reports whether the test binary runs with -update.
func Update() bool { return *update }

// Golden compares got with the file testdata/<name>.golden of the package under test and
// fails the test (without stopping it) with a diff when they differ or the file is missing.
// With -update it writes got to that file instead (creating testdata if needed). name may
// contain slashes for subdirectories of testdata; it must be a local path.
func Golden(t testing.TB, name string, got []byte) {
	t.Helper()
	if name == "" || !filepath.IsLocal(filepath.FromSlash(name)) {
		t.Fatalf("golden file name %q must be a relative path inside testdata", name)
	}
	path := filepath.Join("testdata", filepath.FromSlash(name)+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("update golden file: %v", err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("update golden file: %v", err)
		}
		t.Logf("updated %s", path)
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		t.Errorf("golden file %s does not exist: run the test with -update to create it", path)
		return
	}
	if err != nil {
		t.Fatalf("read golden file: %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("output differs from %s (-want +got; rerun with -update to accept it):\n%s", path, cmp.Diff(strings.SplitAfter(string(want), "\n"), strings.SplitAfter(string(got), "\n")))
	}
}
