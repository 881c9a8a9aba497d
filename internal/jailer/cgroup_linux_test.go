package jailer

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// RemoveCgroups removes each directory and its parent once empty, leaves a parent other jails
// still use, takes a missing directory for removed, and removes only directories.
func TestRemoveCgroups(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) string {
		d := filepath.Join(root, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	alone, shared, other := mk("a/firecracker/vm1"), mk("b/firecracker/vm1"), mk("b/firecracker/vm2")
	if err := RemoveCgroups(context.Background(), alone, shared, filepath.Join(root, "c/firecracker/gone")); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{alone, filepath.Dir(alone), shared} {
		if _, err := os.Stat(gone); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", gone, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another jail's cgroup: %v", err)
	}
	// A directory with something in it (a cgroup never has: its files are not removable) is
	// an error, at once.
	if err := os.WriteFile(filepath.Join(other, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := RemoveCgroups(context.Background(), other); err == nil {
		t.Error("a directory with a file in it was removed")
	}
}
