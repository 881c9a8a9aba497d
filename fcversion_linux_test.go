package smartvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A firecracker stand-in that counts its --version probes.
func countingFirecracker(t *testing.T, version string) (bin, count string) {
	t.Helper()
	dir := t.TempDir()
	bin, count = filepath.Join(dir, "firecracker"), filepath.Join(dir, "probes")
	script := fmt.Sprintf("#!/bin/sh\necho probe >> %s\necho 'Firecracker %s'\n", count, version)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, count
}

func probes(t *testing.T, count string) int {
	t.Helper()
	b, err := os.ReadFile(count)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "probe")
}

// The version probe is cached across Managers (processes) on the same runtime root, keyed by
// the binary's identity, and the cache file is treated as untrusted.
func TestFirecrackerVersionCache(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	bin, count := countingFirecracker(t, "v1.14.2")
	ctx := context.Background()
	version := func(want string) {
		t.Helper()
		// A fresh manager each time: nothing is remembered in memory.
		_, v, err := newManager(t, root, bin).Firecracker(ctx)
		if err != nil || v.String() != want {
			t.Fatalf("version %v, %v; want %s", v, err, want)
		}
	}
	version("1.14.2")
	version("1.14.2")
	if n := probes(t, count); n != 1 {
		t.Fatalf("%d probes for two managers, want 1", n)
	}
	mgr := newManager(t, root, bin)
	cacheFile := filepath.Join(mgr.RuntimeDir(), "cache", binaryKey{Path: bin}.cacheName())
	fi, err := os.Stat(cacheFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file %s: %v, mode %v", cacheFile, err, fi)
	}

	// A new binary at the same path, even with the old size and modification time, is probed.
	old, _ := os.Stat(bin)
	replacement, _ := countingFirecracker(t, "v1.16.1")
	b, _ := os.ReadFile(replacement)
	b = []byte(strings.Replace(string(b), filepath.Dir(replacement), filepath.Dir(bin), 1))
	b = append(b, make([]byte, int(old.Size())-len(b))...)
	if len(b) != int(old.Size()) {
		t.Fatalf("replacement is %d bytes, want %d", len(b), old.Size())
	}
	tmp := bin + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, old.ModTime(), old.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	version("1.16.1")
	if n := probes(t, count); n != 2 {
		t.Fatalf("%d probes after replacing the binary, want 2", n)
	}

	// A cache file that is not what smartvm wrote is a miss (nobody else can reach the private
	// cache directory; a link is never followed).
	for name, tamper := range map[string]func() error{
		"garbage":     func() error { return os.WriteFile(cacheFile, []byte("{not json"), 0o600) },
		"other key":   func() error { return rewrite(cacheFile, `"ino":`, `"ino":1`) },
		"bad version": func() error { return rewrite(cacheFile, `"version":"1.16.1"`, `"version":"9"`) },
		"too big":     func() error { return os.WriteFile(cacheFile, make([]byte, maxVersionCacheFile+1), 0o600) },
		"symlink": func() error {
			good := cacheFile + ".elsewhere"
			if err := os.Rename(cacheFile, good); err != nil {
				return err
			}
			return os.Symlink(good, cacheFile)
		},
	} {
		before := probes(t, count)
		if err := tamper(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		version("1.16.1")
		if n := probes(t, count); n != before+1 {
			t.Errorf("%s: %d probes, want %d: the tampered cache was used", name, n, before+1)
		}
		version("1.16.1") // the probe rewrote the entry
		if n := probes(t, count); n != before+1 {
			t.Errorf("%s: the probe did not restore the cache entry", name)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(cacheFile)); len(ents) > 2 {
		t.Errorf("cache dir holds %d files: a temporary file was left", len(ents))
	}
}

// rewrite replaces the value after key (up to the next comma or brace) in a JSON file.
func rewrite(path, key, with string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i := strings.Index(s, key)
	if i < 0 {
		return fmt.Errorf("%s has no %s", path, key)
	}
	j := i + len(key)
	for j < len(s) && s[j] != ',' && s[j] != '}' {
		j++
	}
	return os.WriteFile(path, []byte(s[:i]+with+s[j:]), 0o600)
}
