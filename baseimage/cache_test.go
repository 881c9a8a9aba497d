package baseimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestConcurrentPullsInProcess(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	rootfsKey := buildNew + "x86_64/ubuntu-24.04.squashfs"
	bucket.setFault(rootfsKey, &fault{times: 1, delay: 100 * time.Millisecond})
	m := testManager(t, bucket)
	var wg sync.WaitGroup
	ids := make([]string, 8)
	errs := make([]error, 8)
	for i := range ids {
		wg.Go(func() {
			b, err := m.Pull(context.Background(), Source{Preset: PresetLatest})
			errs[i] = err
			if err == nil {
				ids[i] = b.ID
			}
		})
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Errorf("pull %d: %s, %v", i, ids[i], errs[i])
		}
	}
	if n := bucket.count(rootfsKey); n != 1 {
		t.Errorf("rootfs downloaded %d times by 8 concurrent pulls, want 1", n)
	}
}

// TestConcurrentPullsAcrossProcesses starts four processes that pull the same preset into one
// cache: the artifacts are downloaded once and all four succeed with the same bundle.
func TestConcurrentPullsAcrossProcesses(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	kernelKey := buildNew + "x86_64/vmlinux-6.18.40"
	rootfsKey := buildNew + "x86_64/ubuntu-24.04.squashfs"
	bucket.setFault(rootfsKey, &fault{times: 1, delay: 300 * time.Millisecond}) // keep the first one busy
	// How many listing requests one resolution takes (pagination included).
	if _, err := testManager(t, bucket).resolvePreset(context.Background(), Source{Preset: PresetLatest}); err != nil {
		t.Fatal(err)
	}
	oneResolution := bucket.listCount()
	bucket.resetCounts()
	dir := filepath.Join(t.TempDir(), "cache")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		out []byte
		err error
	}
	results := make([]result, 4)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			cmd := exec.Command(self, "-test.run=^$")
			cmd.Env = append(os.Environ(), envHelper+"=pull", envHelperDir+"="+dir, envHelperURL+"="+bucket.URL())
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				err = fmt.Errorf("%w: %s", err, stderr.String())
			}
			results[i] = result{out, err}
		})
	}
	wg.Wait()
	var first Bundle
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("process %d: %v", i, r.err)
		}
		var b Bundle
		if err := json.Unmarshal(r.out, &b); err != nil {
			t.Fatalf("process %d printed %q: %v", i, r.out, err)
		}
		if i == 0 {
			first = b
		} else if b.ID != first.ID || b.Rootfs != first.Rootfs {
			t.Errorf("process %d got %s, process 0 got %s", i, b.ID, first.ID)
		}
	}
	for _, k := range []string{kernelKey, rootfsKey} {
		if n := bucket.count(k); n != 1 {
			t.Errorf("%s downloaded %d times by 4 processes, want 1", k, n)
		}
	}
	if n := bucket.listCount(); n != oneResolution {
		t.Errorf("the bucket was listed %d times, want %d (one resolution)", n, oneResolution)
	}
	checkBootReady(t, &first)
}

// hostedBundles publishes n ext4 manifests and returns their URLs.
func hostedBundles(t *testing.T, bucket *fakeBucket, n int) []string {
	var urls []string
	for i := range n {
		u, _ := hostExt4(t, bucket, fmt.Sprintf("img%d", i), 1000+i)
		urls = append(urls, u)
	}
	return urls
}

func TestEvictionWarnsFirstAndSparesBundlesInUse(t *testing.T) {
	bucket := newFakeBucket(t)
	urls := hostedBundles(t, bucket, 4)
	logs := &logCapture{}
	var m *Manager
	// When the warning arrives, the bundle it names must still be installed.
	logs.onWarn = func(r slog.Record) {
		if _, err := os.Stat(m.path(dirBundles, attr(r, "id"), fileMeta)); err != nil {
			t.Errorf("warning for %s arrived after the eviction: %v", attr(r, "id"), err)
		}
	}
	m = testManager(t, bucket, func(o *Options) { o.Logger = slog.New(logs) })
	ctx := context.Background()
	var bundles []*Bundle
	for _, u := range urls[:2] {
		b, err := m.Pull(ctx, Source{ManifestURL: u})
		if err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, b)
		time.Sleep(10 * time.Millisecond) // distinct last-use times
	}
	// bundles[0] is the least recently used, but in use: bundles[1] goes instead.
	release, err := m.Use(ctx, bundles[0].ID, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	// Make bundles[0] the oldest again, then pull a third.
	old := time.Now().Add(-time.Hour)
	os.Chtimes(bundles[0].Dir, old, old)
	third, err := m.Pull(ctx, Source{ManifestURL: urls[2]})
	if err != nil {
		t.Fatal(err)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range list {
		got = append(got, b.ID)
	}
	// Keep 2: third and bundles[1] are the most recent; bundles[0] stays because it is in use.
	want := []string{third.ID, bundles[1].ID, bundles[0].ID}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("cache holds %v, want %v", got, want)
	}
	if len(list[2].Holders) != 1 || list[2].Holders[0] != "vm-a" {
		t.Errorf("holders %v", list[2].Holders)
	}
	if err := m.Remove(ctx, bundles[0].ID); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "vm-a") {
		t.Errorf("Remove of a bundle in use: %v", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // idempotent
		t.Fatal(err)
	}
	// Released, and the least recently used: the next install evicts it and img1, each with a
	// warning first.
	os.Chtimes(bundles[0].Dir, old, old)
	if _, err := m.Pull(ctx, Source{ManifestURL: urls[3]}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, bundles[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("released old bundle not evicted: %v", err)
	}
	var warned []string
	for _, r := range logs.records {
		if r.Level == slog.LevelWarn {
			warned = append(warned, attr(r, "id")+" "+attr(r, "name"))
		}
	}
	want = []string{bundles[1].ID + " img1", bundles[0].ID + " img0"} // keep 2: img3 and img2
	if fmt.Sprint(warned) != fmt.Sprint(want) {
		t.Errorf("warnings %v, want %v", warned, want)
	}
}

func TestPruneListRemoveUse(t *testing.T) {
	bucket := newFakeBucket(t)
	urls := hostedBundles(t, bucket, 3)
	m := testManager(t, bucket, func(o *Options) { o.Keep = -1 })
	ctx := context.Background()
	var ids []string
	for _, u := range urls {
		b, err := m.Pull(ctx, Source{ManifestURL: u})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.ID)
		time.Sleep(10 * time.Millisecond)
	}
	list, _ := m.List(ctx)
	if len(list) != 3 || list[0].ID != ids[2] {
		t.Fatalf("List: %v", list)
	}
	// Using a bundle refreshes its last use.
	release, err := m.Use(ctx, ids[0][:6], "vm1") // a unique prefix works
	if err != nil {
		t.Fatal(err)
	}
	// Another manager (another process) sees the marker and can drop it.
	other := testManager(t, bucket, func(o *Options) { o.Dir = m.dir })
	if _, err := other.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	list, _ = m.List(ctx)
	if len(list) != 1 || list[0].ID != ids[0] {
		t.Fatalf("Prune(0) left %v, want only the bundle in use", list)
	}
	if err := other.Release(ctx, ids[0], "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // already released elsewhere: not an error
		t.Fatal(err)
	}
	evicted, err := m.Prune(ctx, 0)
	if err != nil || len(evicted) != 1 || evicted[0].ID != ids[0] {
		t.Fatalf("Prune(0): %v, %v", evicted, err)
	}
	if err := m.Remove(ctx, ids[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove of an evicted bundle: %v", err)
	}
	if _, err := m.Use(ctx, ids[0], "vm1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Use of an evicted bundle: %v", err)
	}
	if _, err := m.Prune(ctx, -1); err == nil {
		t.Error("Prune(-1) succeeded")
	}
}

// TestInterruptedInstallIsCleaned simulates a process that died mid-install: its staging
// directory (lock not held) and a half-deleted bundle in trash/ are removed by the next pull,
// and List never shows them.
func TestInterruptedInstallIsCleaned(t *testing.T) {
	bucket := newFakeBucket(t)
	urls := hostedBundles(t, bucket, 1)
	m := testManager(t, bucket)
	if err := m.ensureDirs(); err != nil {
		t.Fatal(err)
	}
	crashed := m.path(dirStaging, "deadbeefdeadbeef")
	os.MkdirAll(filepath.Join(crashed, "work"), 0o700)
	os.WriteFile(filepath.Join(crashed, "vmlinux.part"), []byte("half"), 0o644)
	os.WriteFile(crashed+".lock", nil, 0o600)
	os.MkdirAll(m.path(dirTrash, "0123456789abcdef-1234"), 0o700)
	if list, _ := m.List(context.Background()); len(list) != 0 {
		t.Errorf("List shows %v", list)
	}
	if _, err := m.Pull(context.Background(), Source{ManifestURL: urls[0]}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{crashed, crashed + ".lock", m.path(dirTrash, "0123456789abcdef-1234")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived: %v", p, err)
		}
	}
}

// TestPullCallerLeavingDoesNotCancelOthers: when one of two callers sharing a Pull gives up,
// the download goes on for the other; when the last one gives up, it stops and cleans up.
func TestPullCallerLeavingDoesNotCancelOthers(t *testing.T) {
	bucket := newFakeBucket(t)
	url, _ := hostExt4(t, bucket, "shared", 1<<20)
	bucket.setFault("/shared/rootfs.ext4", &fault{times: 1, delay: 300 * time.Millisecond})
	m := testManager(t, bucket)
	impatient, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := m.Pull(context.Background(), Source{ManifestURL: url})
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if _, err := m.Pull(impatient, Source{ManifestURL: url}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("impatient pull: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("patient pull: %v", err)
	}
	if n := bucket.count("/shared/rootfs.ext4"); n != 1 {
		t.Errorf("rootfs downloaded %d times, want 1", n)
	}
}
