package fcspec

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestReleasesOrdered(t *testing.T) {
	rs := Releases()
	if len(rs) < 8 {
		t.Fatalf("got %d embedded specs, want at least 8", len(rs))
	}
	if rs[0].Version != "1.7.0" {
		t.Errorf("oldest = %q, want 1.7.0", rs[0].Version)
	}
	if got := Newest().Version; got != "1.17.0-dev" {
		t.Errorf("newest = %q, want 1.17.0-dev", got)
	}
	for _, v := range []string{"1.14.2", "v1.7.0", "1.17.0-dev"} {
		if _, err := Read(v); err != nil {
			t.Errorf("Read(%q): %v", v, err)
		}
	}
	if _, err := Read("9.9.9"); err == nil {
		t.Error("Read(9.9.9) succeeded, want an error")
	}
}

// TestMatchesShared checks the embedded copies against the project's shared reference folder.
// Under CI=true the folder must exist; elsewhere the test skips without it.
func TestMatchesShared(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "shared", "firecracker", "spec")
	if d := os.Getenv("SMARTVM_SPEC_DIR"); d != "" {
		dir = d
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("spec folder %s is missing under CI=true: %v", dir, err)
		}
		t.Skipf("spec folder %s not present (set SMARTVM_SPEC_DIR to check the embedded copies): %v", dir, err)
	}
	seen := 0
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".yaml" {
			continue
		}
		want, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadFile(e.Name())
		if err != nil {
			t.Errorf("%s is in %s but not embedded: copy it into internal/fcspec/spec", e.Name(), dir)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s: refresh the embedded copy", e.Name(), dir)
		}
		seen++
	}
	if seen != len(Releases()) {
		t.Errorf("shared folder has %d specs, %d are embedded", seen, len(Releases()))
	}
}
