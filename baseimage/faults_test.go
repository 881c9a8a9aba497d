package baseimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hostExt4 publishes a manifest with an ext4 rootfs (no conversion) and returns its URL and the
// rootfs bytes. The rootfs is large enough for drops mid-body to matter.
func hostExt4(t *testing.T, b *fakeBucket, dir string, rootfsSize int) (string, []byte) {
	t.Helper()
	kernel := kernelBytes(dir)
	rootfs := bytes.Repeat([]byte(dir+"-rootfs-"), rootfsSize/len(dir+"-rootfs-")+1)[:rootfsSize]
	b.putFile("/"+dir+"/vmlinux", kernel)
	b.putFile("/"+dir+"/rootfs.ext4", rootfs)
	b.putFile("/"+dir+"/manifest.json", []byte(manifestJSON(dir, kernel, rootfs, "vmlinux", "rootfs.ext4")))
	return b.srv.URL + "/" + dir + "/manifest.json", rootfs
}

func manifestJSON(name string, kernel, rootfs []byte, kernelURL, rootfsURL string) string {
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	return fmt.Sprintf(`{"version":1,"name":%q,"arch":"x86_64","kernel":{"url":%q,"sha256":%q,"size":%d},
"rootfs":{"url":%q,"sha256":%q,"size":%d,"format":"ext4"},"boot_args":"console=ttyS0"}`,
		name, kernelURL, sum(kernel), len(kernel), rootfsURL, sum(rootfs), len(rootfs))
}

func TestPullResumesAfterDroppedConnection(t *testing.T) {
	bucket := newFakeBucket(t)
	url, rootfs := hostExt4(t, bucket, "drop", 3<<20)
	bucket.setFault("/drop/rootfs.ext4", &fault{times: 3, drop: true, dropAfter: 700 << 10})
	var progress []Progress
	m := testManager(t, bucket, func(o *Options) {
		o.Retries = 1 // drops that make progress do not use up retries
		o.Progress = func(p Progress) { progress = append(progress, p) }
	})
	b, err := m.Pull(context.Background(), Source{ManifestURL: url})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(b.Rootfs)
	if !bytes.Equal(got, rootfs) {
		t.Fatal("resumed rootfs differs from the original")
	}
	if n := bucket.count("/drop/rootfs.ext4"); n != 4 {
		t.Errorf("rootfs requested %d times, want 4 (3 drops, then the rest)", n)
	}
	want := []string{"bytes=716800-", "bytes=1433600-", "bytes=2150400-"}
	if fmt.Sprint(bucket.ranges) != fmt.Sprint(want) {
		t.Errorf("range requests %v, want %v", bucket.ranges, want)
	}
	last := progress[len(progress)-1]
	if last.File != "rootfs.ext4" || last.Done != int64(len(rootfs)) || last.Total != int64(len(rootfs)) {
		t.Errorf("last progress %+v", last)
	}
	for i := 1; i < len(progress); i++ {
		if progress[i].File == progress[i-1].File && progress[i].Done < progress[i-1].Done {
			t.Errorf("progress went backwards: %+v then %+v", progress[i-1], progress[i])
		}
	}
}

func TestPullRestartsWhenRangeIgnored(t *testing.T) {
	bucket := newFakeBucket(t)
	url, rootfs := hostExt4(t, bucket, "norange", 1<<20)
	// The first attempt drops; the server ignores Range on the retry, so the download restarts.
	bucket.setFault("/norange/rootfs.ext4", &fault{times: 2, drop: true, dropAfter: 300 << 10, noRange: true})
	m := testManager(t, bucket)
	b, err := m.Pull(context.Background(), Source{ManifestURL: url})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(b.Rootfs)
	if !bytes.Equal(got, rootfs) {
		t.Fatal("restarted download differs from the original")
	}
}

func TestPullRetriesServerErrors(t *testing.T) {
	bucket := newFakeBucket(t)
	url, _ := hostExt4(t, bucket, "flaky", 1000)
	bucket.setFault("/flaky/manifest.json", &fault{times: 2, status: http.StatusServiceUnavailable})
	bucket.setFault("/flaky/vmlinux", &fault{times: 2, status: http.StatusInternalServerError})
	m := testManager(t, bucket)
	if _, err := m.Pull(context.Background(), Source{ManifestURL: url}); err != nil {
		t.Fatal(err)
	}
	if n := bucket.count("/flaky/vmlinux"); n != 3 {
		t.Errorf("kernel requested %d times, want 3", n)
	}

	// Persistent failures give up after Retries.
	bucket.setFault("/flaky/rootfs.ext4", &fault{times: -1, status: http.StatusBadGateway})
	m2 := testManager(t, bucket, func(o *Options) { o.Retries = 2 })
	_, err := m2.Pull(context.Background(), Source{ManifestURL: url})
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusBadGateway || !strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Fatalf("pull against a failing server: %v", err)
	}
	assertNothingCached(t, m2)
}

func TestPullBadInputCachesNothing(t *testing.T) {
	bucket := newFakeBucket(t)
	goodURL, goodRootfs := hostExt4(t, bucket, "good", 5000)
	goodKernel := kernelBytes("good")
	goodSum := hex.EncodeToString(func() []byte { s := sha256.Sum256(goodKernel); return s[:] }())
	kernel := kernelBytes("k")
	rootfs := []byte("rootfs")
	tests := []struct {
		name     string
		manifest string // served at /case/<name>/manifest.json; "" means 404
		setup    func()
		check    func(error) bool
		msg      string
	}{
		{
			name:     "checksum mismatch",
			manifest: strings.Replace(manifestJSON("x", goodKernel, goodRootfs, "/good/vmlinux", "/good/rootfs.ext4"), goodSum, strings.Repeat("0", 64), 1),
			check:    func(err error) bool { return errors.Is(err, ErrChecksum) },
			msg:      "sha256 is " + goodSum,
		},
		{
			name:     "manifest size too small",
			manifest: strings.Replace(manifestJSON("x", kernel, rootfs, "/good/vmlinux", "/good/rootfs.ext4"), fmt.Sprintf(`"size":%d`, len(kernel)), `"size":10`, 1),
			check:    func(err error) bool { return errors.Is(err, ErrChecksum) },
			msg:      "want 10",
		},
		{
			name:     "truncated body",
			manifest: manifestJSON("x", kernel, rootfs, "/trunc/vmlinux", "/good/rootfs.ext4"),
			setup: func() {
				bucket.putFile("/trunc/vmlinux", kernel)
				bucket.setFault("/trunc/vmlinux", &fault{times: -1, short: 100})
			},
			check: func(err error) bool { return errors.Is(err, ErrChecksum) },
			msg:   "server sends 100 bytes",
		},
		{
			name:     "connection always drops",
			manifest: manifestJSON("x", kernel, rootfs, "/drops/vmlinux", "/good/rootfs.ext4"),
			setup: func() {
				bucket.putFile("/drops/vmlinux", kernel)
				bucket.setFault("/drops/vmlinux", &fault{times: -1, drop: true})
			},
			check: func(err error) bool { return strings.Contains(err.Error(), "unexpected EOF") },
			msg:   "read body",
		},
		{
			name:  "manifest 404",
			check: func(err error) bool { return errors.Is(err, ErrNotFound) },
			msg:   "NoSuchKey",
		},
		{
			name:     "artifact 404",
			manifest: manifestJSON("x", kernel, rootfs, "/nowhere/vmlinux", "/good/rootfs.ext4"),
			check:    func(err error) bool { return errors.Is(err, ErrNotFound) },
			msg:      "HTTP 404",
		},
		{
			name:     "malformed manifest",
			manifest: strings.Replace(manifestJSON("x", kernel, rootfs, "k", "r"), `"format":"ext4"`, `"format":"ext4","owner":"me"`, 1),
			check: func(err error) bool {
				var me *ManifestError
				return errors.As(err, &me) && me.Field == "rootfs.owner"
			},
			msg: `field "rootfs.owner"`,
		},
		{
			name:     "unknown version",
			manifest: strings.Replace(manifestJSON("x", kernel, rootfs, "k", "r"), `"version":1`, `"version":7`, 1),
			check:    func(err error) bool { return errors.Is(err, ErrInvalidManifest) },
			msg:      "version 7 is not supported",
		},
		{
			name:     "other architecture",
			manifest: strings.Replace(manifestJSON("x", kernel, rootfs, "k", "r"), `"x86_64"`, `"aarch64"`, 1),
			check:    func(err error) bool { return err != nil },
			msg:      "it is for aarch64",
		},
		{
			name:     "local file from a hosted manifest",
			manifest: manifestJSON("x", kernel, rootfs, "file:///etc/hostname", "r"),
			check:    func(err error) bool { return errors.Is(err, ErrInvalidManifest) },
			msg:      "only name http or https",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := "/case/" + strings.ReplaceAll(tc.name, " ", "-") + "/manifest.json"
			if tc.manifest != "" {
				bucket.putFile(path, []byte(tc.manifest))
			}
			if tc.setup != nil {
				tc.setup()
			}
			m := testManager(t, bucket, func(o *Options) { o.Retries = 1 })
			_, err := m.Pull(context.Background(), Source{ManifestURL: bucket.srv.URL + path})
			if err == nil || !tc.check(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("pull: %v; want an error saying %q", err, tc.msg)
			}
			assertNothingCached(t, m)
		})
	}
	// The good manifest still works with the same server.
	if _, err := testManager(t, bucket).Pull(context.Background(), Source{ManifestURL: goodURL}); err != nil {
		t.Fatal(err)
	}
}

func TestPullStallsAndTimeouts(t *testing.T) {
	bucket := newFakeBucket(t)
	url, _ := hostExt4(t, bucket, "slow", 64<<10)
	// Resuming after stalls that made progress is covered above; this body never progresses.
	bucket.setFault("/slow/rootfs.ext4", &fault{times: -1, hang: true})

	m := testManager(t, bucket, func(o *Options) { o.StallTimeout = 100 * time.Millisecond; o.Retries = 1 })
	_, err := m.Pull(context.Background(), Source{ManifestURL: url})
	if !errors.Is(err, errStall) || !strings.Contains(err.Error(), "no data for 100ms") || !strings.Contains(err.Error(), "gave up after 2 attempts") {
		t.Fatalf("pull of a stalling body: %v", err)
	}
	assertNothingCached(t, m)

	// A caller's deadline ends the pull with its error, even while the body trickles in.
	bucket.setFault("/slow/rootfs.ext4", &fault{times: -1, slow: 20 * time.Millisecond})
	m = testManager(t, bucket)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err = m.Pull(ctx, Source{ManifestURL: url})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pull past its deadline: %v", err)
	}
	assertNothingCached(t, m)

	// A server that never answers the headers counts as a stall too.
	bucket.setFault("/slow/manifest.json", &fault{times: -1, delay: 300 * time.Millisecond})
	m = testManager(t, bucket, func(o *Options) { o.StallTimeout = 50 * time.Millisecond; o.Retries = -1 })
	if _, err := m.Pull(context.Background(), Source{ManifestURL: url}); err == nil {
		t.Fatal("pull from a server that never answers succeeded")
	}
}

func TestPullMissingTools(t *testing.T) {
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	t.Setenv("PATH", t.TempDir())
	m := testManager(t, bucket)
	m.toolDirs = nil
	_, err := m.Pull(context.Background(), Source{Preset: PresetLatest})
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "squashfs-tools") {
		t.Fatalf("pull without unsquashfs: %v; want ErrMissingTool naming squashfs-tools", err)
	}
	assertNothingCached(t, m)
	if err := missingTool("mkfs.ext4", toolPackages["mkfs.ext4"]); !strings.Contains(err.Error(), "install the Debian package e2fsprogs") {
		t.Errorf("missing mkfs.ext4: %v", err)
	}
}

func TestPullEscapes(t *testing.T) {
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	// Keys that try to climb out of the build prefix never match the patterns.
	bucket.put("firecracker-ci/20261231-ffffffffffff-0/x86_64/../../../../etc/vmlinux-9.9.9", []byte("x"))
	bucket.put("firecracker-ci/20261231-ffffffffffff-0/x86_64/ubuntu-99.99.squashfs/../x", []byte("x"))
	m := testManager(t, bucket)
	ctx := context.Background()
	for _, id := range []string{"../bundles", "/etc", "0123456789abcdef0", "ABC", ""} {
		if err := m.Remove(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Remove(%q): %v, want ErrNotFound", id, err)
		}
		if _, err := m.Use(ctx, id, "vm1"); err == nil {
			t.Errorf("Use(%q) succeeded", id)
		}
	}
	for _, holder := range []string{"../x", "a/b", "", ".hidden", strings.Repeat("a", 200)} {
		if _, err := m.Use(ctx, "0123456789abcdef", holder); err == nil || !strings.Contains(err.Error(), "holder") {
			t.Errorf("Use with holder %q: %v", holder, err)
		}
		if err := m.Release(ctx, "0123456789abcdef", holder); err == nil {
			t.Errorf("Release with holder %q succeeded", holder)
		}
	}
	if _, err := New(Options{Dir: t.TempDir(), BucketURL: "file:///etc", Arch: ArchX86_64}); err == nil {
		t.Error("New accepted a file bucket URL")
	}
	if _, err := New(Options{Dir: t.TempDir(), Arch: "riscv64"}); err == nil {
		t.Error("New accepted an unknown architecture")
	}
	// A cache dir writable by others is refused.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	mo := testManager(t, bucket, func(o *Options) { o.Dir = open })
	if _, err := mo.Pull(ctx, Source{Preset: PresetLatest}); err == nil || !strings.Contains(err.Error(), "can be written by other users") {
		t.Errorf("pull into a world-writable cache dir: %v", err)
	}
}

func TestConvertTools(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", t.TempDir())
	for _, name := range []string{"unsquashfs", "e2fsck"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := convertTools([]string{bin}, false)
	want := []Tool{
		{Name: "unsquashfs", Package: "squashfs-tools", Path: filepath.Join(bin, "unsquashfs")},
		{Name: "mkfs.ext4", Package: "e2fsprogs"},
		{Name: "e2fsck", Package: "e2fsprogs", Path: filepath.Join(bin, "e2fsck")},
		{Name: "debugfs", Package: "e2fsprogs"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("as non-root: %+v, want %+v", got, want)
	}
	if got := convertTools([]string{bin}, true); len(got) != 3 || got[2].Name != "e2fsck" {
		t.Errorf("as root (no debugfs): %+v", got)
	}
}

// A host name that does not resolve fails at once; a DNS server that times out is retried.
func TestPullNoSuchHostIsNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name     string
		dnsErr   net.DNSError
		attempts int
	}{
		{"no such host", net.DNSError{Err: "no such host", Name: "nowhere.invalid", IsNotFound: true}, 1},
		{"dns timeout", net.DNSError{Err: "i/o timeout", Name: "nowhere.invalid", IsTimeout: true}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dials atomic.Int32
			client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
				dials.Add(1)
				e := tc.dnsErr
				return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &e}
			}}}
			m := testManager(t, nil, func(o *Options) { o.HTTPClient, o.Retries = client, 2 })
			_, err := m.Pull(context.Background(), Source{ManifestURL: "http://nowhere.invalid/manifest.json"})
			var de *net.DNSError
			if !errors.As(err, &de) {
				t.Fatalf("pull: %v, want a *net.DNSError", err)
			}
			if n := int(dials.Load()); n != tc.attempts {
				t.Errorf("%d attempts, want %d: %v", n, tc.attempts, err)
			}
		})
	}
}

// Download fetches one file with Pull's download path: it resumes a dropped transfer,
// verifies the sha256 and leaves nothing behind on a mismatch.
func TestDownloadFile(t *testing.T) {
	bucket := newFakeBucket(t)
	body := bytes.Repeat([]byte("release "), 64<<10)
	bucket.putFile("/rel/firecracker.tgz", body)
	bucket.setFault("/rel/firecracker.tgz", &fault{times: 1, drop: true, dropAfter: 100 << 10})
	sum := sha256.Sum256(body)
	var last Progress
	m := testManager(t, bucket, func(o *Options) { o.Progress = func(p Progress) { last = p } })
	dir := t.TempDir()
	got, err := m.Download(context.Background(), bucket.srv.URL+"/rel/firecracker.tgz", filepath.Join(dir, "fc.tgz"), hex.EncodeToString(sum[:]), "fc.tgz")
	if err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("download: %s, %v", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "fc.tgz")); !bytes.Equal(b, body) {
		t.Error("downloaded file differs")
	}
	if n := bucket.count("/rel/firecracker.tgz"); n != 2 || len(bucket.ranges) != 1 {
		t.Errorf("%d requests, ranges %v: want a resumed second request", n, bucket.ranges)
	}
	if last.File != "fc.tgz" || last.Done != int64(len(body)) {
		t.Errorf("last progress %+v", last)
	}
	_, err = m.Download(context.Background(), bucket.srv.URL+"/rel/firecracker.tgz", filepath.Join(dir, "bad.tgz"), strings.Repeat("0", 64), "bad.tgz")
	if !errors.Is(err, ErrChecksum) {
		t.Errorf("download with a wrong sha256: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("a failed download left files: %v", ents)
	}
}
