package baseimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment of the helper process started by the multi-process tests.
const (
	envHelper    = "BASEIMAGE_TEST_HELPER"
	envHelperDir = "BASEIMAGE_TEST_DIR"
	envHelperURL = "BASEIMAGE_TEST_BUCKET"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envHelper); mode != "" {
		os.Exit(helperMain(mode))
	}
	code := m.Run()
	fixtureCleanup()
	os.Exit(code)
}

// helperMain is a child process of a multi-process test. It prints a JSON result on stdout.
func helperMain(mode string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch mode {
	case "pull":
		m, err := New(Options{Dir: os.Getenv(envHelperDir), BucketURL: os.Getenv(envHelperURL), Arch: ArchX86_64, RootfsSizeMiB: 16, RootfsHeadroomMiB: 4, RetryBackoff: time.Millisecond})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		b, err := m.Pull(ctx, Source{Preset: PresetLatest})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(b)
		return 0
	case "convert": // convert a squashfs as the (unprivileged) user this process runs as
		dir := os.Getenv(envHelperDir)
		opts := Options{Dir: filepath.Join(dir, "cache"), Arch: ArchX86_64, RootfsSizeMiB: 16, RootfsHeadroomMiB: 4}
		if _, err := os.Stat(filepath.Join(dir, "agent")); err == nil {
			opts.AgentBinary = filepath.Join(dir, "agent")
		}
		m, err := New(opts)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		key, err := os.ReadFile(filepath.Join(dir, "key.pub"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := m.convertSquashfs(ctx, "rootfs.squashfs", filepath.Join(dir, "rootfs.squashfs"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "work"), key); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "oci": // pull an OCI image as the (unprivileged) user this process runs as
		dir := os.Getenv(envHelperDir)
		m, err := New(Options{Dir: filepath.Join(dir, "cache"), Arch: ArchX86_64, RootfsHeadroomMiB: 4,
			Kernel: filepath.Join(dir, "vmlinux"), AgentBinary: filepath.Join(dir, "agent")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		b, err := m.Pull(ctx, Source{OCI: os.Getenv(envHelperURL)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(b)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

// The test rootfs: a small squashfs made with mksquashfs once per test binary.
var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixtureSqfs []byte
	fixtureErr  error
)

func fixtureCleanup() {
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
}

// testSquashfs returns a squashfs image holding a tiny root file system. As root it includes a
// device node, a file owned by uid 1234 and a set-uid file, to check they survive conversion.
func testSquashfs(t testing.TB) []byte {
	t.Helper()
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("needs mksquashfs (Debian package squashfs-tools)")
	}
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "baseimage-fixture-")
		if fixtureErr != nil {
			return
		}
		tree := filepath.Join(fixtureDir, "tree")
		files := map[string]string{
			"etc/hostname":                      "testguest\n",
			"etc/os-release":                    "NAME=\"Test\"\n",
			"bin/init":                          "#!/bin/sh\necho hello\n",
			"root/.profile":                     "# profile\n",
			"var/lib/data.bin":                  strings.Repeat("x", 100000),
			"odd/a \"quoted\" name with spaces": "odd\n",
		}
		for name, content := range files {
			p := filepath.Join(tree, name)
			if fixtureErr = os.MkdirAll(filepath.Dir(p), 0o755); fixtureErr != nil {
				return
			}
			if fixtureErr = os.WriteFile(p, []byte(content), 0o644); fixtureErr != nil {
				return
			}
		}
		steps := []func() error{
			func() error { return os.Chmod(filepath.Join(tree, "root"), 0o700) },
			func() error { return os.Chmod(filepath.Join(tree, "bin/init"), 0o755|os.ModeSetuid) },
			func() error { return os.Symlink("/etc/hostname", filepath.Join(tree, "etc/hostname.link")) },
			func() error { return os.Mkdir(filepath.Join(tree, "readonly"), 0o555) },
		}
		if os.Geteuid() == 0 {
			steps = append(steps,
				func() error { return os.Chown(filepath.Join(tree, "var/lib/data.bin"), 1234, 1234) },
				func() error { return os.MkdirAll(filepath.Join(tree, "dev"), 0o755) },
				func() error {
					return exec.Command("mknod", "-m", "0666", filepath.Join(tree, "dev/null"), "c", "1", "3").Run()
				},
			)
		}
		for _, s := range steps {
			if fixtureErr = s(); fixtureErr != nil {
				return
			}
		}
		img := filepath.Join(fixtureDir, "rootfs.squashfs")
		out, err := exec.Command("mksquashfs", tree, img, "-noappend", "-quiet", "-no-progress").CombinedOutput()
		if err != nil {
			fixtureErr = fmt.Errorf("mksquashfs: %v: %s", err, out)
			return
		}
		fixtureSqfs, fixtureErr = os.ReadFile(img)
	})
	if fixtureErr != nil {
		t.Fatalf("build test squashfs: %v", fixtureErr)
	}
	return fixtureSqfs
}

// needConvertTools skips a test when the conversion tools are missing.
func needConvertTools(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"unsquashfs", "mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := lookTool(sbinDirs(), tool); err != nil {
			t.Skipf("needs %v", err)
		}
	}
}

// Bucket contents used by most tests: several weekly builds and series, the per-release
// layout, and keys the patterns must ignore.
const (
	buildOld    = "firecracker-ci/20260130-7073e31a0ed7-0/"
	buildMid    = "firecracker-ci/20260812-48f1b9fb52e9-0/"
	buildNew    = "firecracker-ci/20260902-a6146c8bb213-0/"
	releaseV114 = "firecracker-ci/v1.14/"
)

// kernelBytes is a fake kernel whose content names its key, so each key's sha256 differs.
func kernelBytes(key string) []byte {
	return []byte(strings.Repeat("vmlinux:"+key+"\n", 200))
}

func populateBucket(t testing.TB, b *fakeBucket) {
	t.Helper()
	sq := testSquashfs(t)
	sq2 := append(bytes.Clone(sq), make([]byte, 4096)...) // a different squashfs: trailing padding is ignored
	for _, k := range []string{
		buildOld + "x86_64/vmlinux-5.10.245",
		buildOld + "x86_64/vmlinux-6.1.150",
		buildMid + "x86_64/vmlinux-6.1.170",
		buildMid + "x86_64/vmlinux-6.1.99",
		buildMid + "x86_64/vmlinux-6.18.9",
		buildMid + "x86_64/vmlinux-6.18.39",
		buildNew + "x86_64/vmlinux-6.18.40",
		buildNew + "x86_64/vmlinux-5.10.300",
		buildNew + "x86_64/vmlinux-6.18.41-no-acpi",
		buildNew + "x86_64/vmlinux-6.18.41.debug",
		buildNew + "x86_64/vmlinux-6.18.1000",
		buildNew + "x86_64/debug/vmlinux-6.18.42",
		buildNew + "aarch64/vmlinux-6.1.180",
		releaseV114 + "x86_64/vmlinux-6.1.141",
		releaseV114 + "x86_64/vmlinux-5.10.230",
		"firecracker-ci/firecracker/v1.14.0/x86_64/vmlinux-9.9.9",
		"firecracker-ci/2026-bad/x86_64/vmlinux-9.9.9",
	} {
		b.put(k, kernelBytes(k))
	}
	b.put(buildOld+"x86_64/ubuntu-22.04.squashfs", sq)
	b.put(buildOld+"x86_64/ubuntu-24.04.squashfs", sq2)
	b.put(buildMid+"x86_64/ubuntu-24.04.squashfs", sq)
	b.put(buildNew+"x86_64/ubuntu-24.04.squashfs", sq2)
	b.put(buildNew+"x86_64/ubuntu-24.04.ext4", []byte("not picked"))
	b.put(buildNew+"x86_64/ubuntu-24.04.squashfs.old", []byte("not picked"))
	b.put(buildNew+"aarch64/ubuntu-24.04.squashfs", sq)
	b.put(releaseV114+"x86_64/ubuntu-24.04.squashfs", sq)
	b.put(releaseV114+"x86_64/ubuntu-22.04.squashfs", sq2)
}

// testManager returns a manager on a fresh cache dir with quick retries and small images.
func testManager(t testing.TB, bucket *fakeBucket, mod ...func(*Options)) *Manager {
	t.Helper()
	opts := Options{
		Dir: filepath.Join(t.TempDir(), "cache"), Arch: ArchX86_64, RootfsSizeMiB: 16, RootfsHeadroomMiB: 4,
		RetryBackoff: time.Millisecond, StallTimeout: 5 * time.Second,
	}
	if bucket != nil {
		opts.BucketURL = bucket.URL()
	}
	for _, f := range mod {
		f(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// assertNothingCached checks that a failed Pull left no bundle, ref, staging or trash entry.
func assertNothingCached(t testing.TB, m *Manager) {
	t.Helper()
	for _, d := range []string{dirBundles, dirRefs, dirStaging, dirTrash, dirInUse} {
		ents, err := os.ReadDir(m.path(d))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if len(names) > 0 {
			t.Errorf("%s/ holds %v after a failed pull, want nothing", d, names)
		}
	}
	var parts []string
	filepath.WalkDir(m.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".part") {
			parts = append(parts, p)
		}
		return nil
	})
	if len(parts) > 0 {
		t.Errorf("temp files left: %v", parts)
	}
}

// logCapture records log records, calling onWarn (if set) when a Warn arrives.
type logCapture struct {
	mu      sync.Mutex
	records []slog.Record
	onWarn  func(slog.Record)
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r.Clone())
	if r.Level == slog.LevelWarn && c.onWarn != nil {
		c.onWarn(r)
	}
	return nil
}
func (c *logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCapture) WithGroup(string) slog.Handler      { return c }

func attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}
