package stage

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// benchImage lays out the staging benchmark's image: 1 GiB holding 100 MiB of data, as 100
// extents of 1 MiB spread evenly.
func benchImage(b *testing.B, dir string) string {
	b.Helper()
	var exts []extent
	for i := range int64(100) {
		exts = append(exts, extent{off: i * 10 * mib, len: mib})
	}
	p := filepath.Join(dir, "image")
	writeSparse(b, p, 1<<30, exts)
	return p
}

// BenchmarkStage stages a 1 GiB sparse image that holds 100 MiB of data with Copy and, for
// comparison, with a plain io.Copy between the two *os.File (which Go runs as
// copy_file_range or sendfile where it can), reporting the bytes each writes and the storage
// the copy occupies. Run it with:
//
//	go test -run '^$' -bench BenchmarkStage ./internal/stage/
//
// Layouts: within the temp directory's filesystem, within /dev/shm (where smartvm's runtime
// directory lives by default), from the temp directory to /dev/shm (across filesystems), and
// on a filesystem with reflinks when one is available (see reflinkDir).
func BenchmarkStage(b *testing.B) {
	tmp := b.TempDir()
	shm, why := shmDir(b)
	type pair struct{ src, dst string }
	cases := []struct {
		name string
		dirs func(b *testing.B) pair
	}{
		{"tmp", func(*testing.B) pair { return pair{tmp, tmp} }},
		{"shm", func(b *testing.B) pair {
			if shm == "" {
				b.Skip(why)
			}
			return pair{shm, shm}
		}},
		{"tmp-to-shm", func(b *testing.B) pair {
			if shm == "" {
				b.Skip(why)
			}
			return pair{tmp, shm}
		}},
		{"reflink-fs", func(b *testing.B) pair { d := reflinkDir(b); return pair{d, d} }},
	}
	images := map[string]string{}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			d := c.dirs(b)
			src, ok := images[d.src]
			if !ok {
				src = benchImage(b, d.src)
				images[d.src] = src
			}
			dst := filepath.Join(d.dst, "staged")
			b.Run("Copy", func(b *testing.B) {
				benchStage(b, dst, func() int64 {
					res, err := Copy(context.Background(), src, dst)
					if err != nil {
						b.Fatal(err)
					}
					return res.BytesWritten
				})
			})
			if c.name == "reflink-fs" {
				b.Run("Copy-no-reflink", func(b *testing.B) {
					benchStage(b, dst, func() int64 {
						res, err := copyFile(context.Background(), src, dst, strategy{noReflink: true})
						if err != nil {
							b.Fatal(err)
						}
						return res.BytesWritten
					})
				})
			}
			b.Run("io.Copy", func(b *testing.B) {
				benchStage(b, dst, func() int64 { return naiveCopy(b, src, dst) })
			})
		})
	}
}

// benchStage runs stage (which creates dst and returns the bytes it wrote) b.N times, removing
// dst between runs outside the timer.
func benchStage(b *testing.B, dst string, stage func() int64) {
	var written, occupied int64
	for b.Loop() {
		written += stage()
		b.StopTimer()
		occupied += allocated(b, dst)
		if err := os.Remove(dst); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(written)/float64(b.N), "bytes-written/op")
	b.ReportMetric(float64(occupied)/float64(b.N), "bytes-allocated/op")
}

func naiveCopy(b *testing.B, src, dst string) int64 {
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(out, in)
	if err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	return n
}
