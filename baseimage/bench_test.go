package baseimage

import (
	"context"
	"crypto/rand"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPullCached measures Pull of a preset whose bundle is cached: the path every VM start
// takes. Target: well under a millisecond.
func BenchmarkPullCached(b *testing.B) {
	needConvertTools(b)
	bucket := newFakeBucket(b)
	populateBucket(b, bucket)
	m := testManager(b, bucket)
	ctx := context.Background()
	if _, err := m.Pull(ctx, Source{Preset: PresetLatest}); err != nil {
		b.Fatal(err)
	}
	bucket.srv.Close() // no network from here on
	for b.Loop() {
		if _, err := m.Pull(ctx, Source{Preset: PresetLatest}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDownload downloads a 64 MiB object from a local server with fetch (size and sha256
// verification, rename) and, in the same iteration, with a plain GET and io.Copy of the
// same bytes into a file in the same directory. It reports both throughputs and their ratio
// (target: fetch at least 0.9 of io.Copy).
func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	bucket := newFakeBucket(b)
	bucket.putFile("/blob", data)
	m := testManager(b, bucket)
	dir := b.TempDir()
	u, _ := url.Parse(bucket.srv.URL + "/blob")
	want, err := func() (string, error) {
		p := filepath.Join(dir, "ref")
		os.WriteFile(p, data, 0o644)
		defer os.Remove(p)
		f, err := ManifestFileFor(p)
		return f.SHA256, err
	}()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var rawTime, fetchTime time.Duration
	b.SetBytes(size)
	for b.Loop() {
		start := time.Now()
		resp, err := m.client.Get(u.String())
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, "raw"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		f.Close()
		rawTime += time.Since(start)
		os.Remove(filepath.Join(dir, "raw"))

		start = time.Now()
		dst := filepath.Join(dir, "fetched")
		if _, err := m.fetch(ctx, fetchReq{name: "blob", loc: location{url: u}, size: size, sha256: want}, dst); err != nil {
			b.Fatal(err)
		}
		fetchTime += time.Since(start)
		os.Remove(dst)
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * size / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(rawTime), "io.Copy-MB/s")
	b.ReportMetric(mbps(fetchTime), "fetch-MB/s")
	b.ReportMetric(rawTime.Seconds()/fetchTime.Seconds(), "fetch/io.Copy")
}
