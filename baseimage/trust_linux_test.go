package baseimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/testutil"
)

// Another user who created the cache's parent (or planted a symlink there) cannot make root's
// smartvm use it: every call that touches the cache fails with an error naming the problem,
// and nothing is written through it.
func TestCacheRefusesAnotherUsersDirectory(t *testing.T) {
	u := testutil.OtherUser(t)
	shared := testutil.SharedDir(t)
	victim := t.TempDir()
	for _, plant := range []string{
		"mkdir -m 0755 " + shared + "/.smartvm",
		"ln -s " + victim + " " + shared + "/.smartvm",
	} {
		os.RemoveAll(filepath.Join(shared, ".smartvm"))
		u.Sh(t, plant)
		m, err := New(Options{Dir: filepath.Join(shared, ".smartvm", "base-images"), Arch: ArchX86_64})
		if err != nil {
			t.Fatal(err)
		}
		_, lerr := m.List(context.Background())
		_, perr := m.Pull(context.Background(), Source{ManifestPath: "/nonexistent.json"})
		for _, err := range []error{lerr, perr} {
			if !errors.Is(err, safedir.ErrUntrusted) || !strings.Contains(err.Error(), "SMARTVM_BASE_IMAGE_DIR") {
				t.Errorf("%s: got %v, want an untrusted-path error with the way out", plant, err)
			}
		}
		m.Close()
		if ents, _ := os.ReadDir(victim); len(ents) != 0 {
			t.Fatalf("%s: written through the planted directory: %v", plant, ents)
		}
	}
}

// A manifest path that is a FIFO is refused at once, not read forever.
func TestManifestFIFORefused(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "manifest.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	m := testManager(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.Pull(ctx, Source{ManifestPath: fifo}); !errors.Is(err, safedir.ErrUntrusted) || ctx.Err() != nil {
		t.Fatalf("pull a FIFO manifest: %v (ctx %v)", err, ctx.Err())
	}
	if _, err := ManifestFileFor(fifo); !errors.Is(err, safedir.ErrUntrusted) {
		t.Fatalf("describe a FIFO: %v", err)
	}
}
