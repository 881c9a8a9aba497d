package baseimage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// benchImageLayers are three uncompressed layers of a root filesystem-like tree: 2000 files
// of 4 to 64 KiB in 40 directories, then two files of 16 MiB, then a layer that overwrites
// and whites out some of the first. About 100 MiB of layer data.
func benchImageLayers(b testing.TB) ([]v1.Layer, [][]byte) {
	b.Helper()
	blob := bigLayerData(32 << 20)
	var small []tarEntry
	off := 0
	for d := range 40 {
		dn := "usr/lib/d" + strconv.Itoa(d) + "/"
		small = append(small, dirE(dn, 0o755, 0))
		for f := range 50 {
			size := 4096 << ((d + f) % 5) // 4, 8, 16, 32, 64 KiB
			if off+size > len(blob) {
				off = 0
			}
			small = append(small, fileE(dn+"f"+strconv.Itoa(f), string(blob[off:off+size]), 0o644, 0))
			off += size
		}
	}
	big := []tarEntry{dirE("data/", 0o755, 0), fileE("data/a", string(blob[:16<<20]), 0o644, 0), fileE("data/b", string(blob[16<<20:]), 0o644, 0)}
	top := []tarEntry{fileE("usr/lib/d0/.wh.f0", "", 0o644, 0), fileE("usr/lib/d1/f1", "changed", 0o644, 0), dirE("usr/lib/d2/", 0o755, 0), fileE("usr/lib/d2/.wh..wh..opq", "", 0o644, 0)}
	var layers []v1.Layer
	var tars [][]byte
	for _, es := range [][]tarEntry{{dirE("usr/", 0o755, 0), dirE("usr/lib/", 0o755, 0)}, small, big, top} {
		data := tarBytes(b, es...)
		tars = append(tars, data)
		layers = append(layers, static.NewLayer(data, types.OCIUncompressedLayer))
	}
	return layers, tars
}

func bigLayerData(size int) []byte {
	data := make([]byte, size)
	x := uint64(88172645463325252)
	for i := 0; i+8 <= len(data); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for j := range 8 {
			data[i+j] = byte(x >> (8 * j))
		}
	}
	return data
}

// BenchmarkOCIConvert measures converting an image of about 100 MiB of layer data into a
// cached ext4 bundle (pull from the in-process registry, flatten, mkfs.ext4 -d, debugfs
// fixups, e2fsck -fn, install), and in the same iteration the plain tools on the same layers:
// `tar -x` of each layer in turn into a directory (whiteouts not applied), then
// `mkfs.ext4 -d` of it into an image of the same size. It reports both throughputs in MB/s
// of layer data and their ratio.
func BenchmarkOCIConvert(b *testing.B) {
	r := newTestRegistry(b)
	layers, tars := benchImageLayers(b)
	img := testImage(b, "amd64", v1.Config{}, layers...)
	r.push(b, "bench:1", img)
	var total int64
	for _, t := range tars {
		total += int64(len(t))
	}
	mkfs, err := lookTool(sbinDirs(), "mkfs.ext4")
	if err != nil {
		b.Skip(err)
	}
	ctx := context.Background()
	work := b.TempDir()
	var convTime, toolTime time.Duration
	b.SetBytes(total)
	for b.Loop() {
		m := ociManager(b, func(o *Options) { o.Dir = filepath.Join(work, "cache"); o.Keep = -1 })
		start := time.Now()
		bundle, err := m.Pull(ctx, Source{OCI: r.ref("bench:1")})
		if err != nil {
			b.Fatal(err)
		}
		convTime += time.Since(start)
		st, _ := os.Stat(bundle.Rootfs)
		m.Close()
		os.RemoveAll(filepath.Join(work, "cache"))

		tree, image := filepath.Join(work, "tree"), filepath.Join(work, "plain.ext4")
		start = time.Now()
		os.Mkdir(tree, 0o755)
		for _, t := range tars {
			cmd := exec.Command("tar", "-x", "-C", tree)
			cmd.Stdin = bytes.NewReader(t)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("tar -x: %v: %s", err, out)
			}
		}
		f, _ := os.Create(image)
		f.Truncate(st.Size())
		f.Close()
		if out, err := exec.Command(mkfs, "-q", "-F", "-d", tree, image).CombinedOutput(); err != nil {
			b.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
		toolTime += time.Since(start)
		os.RemoveAll(tree)
		os.Remove(image)
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * float64(total) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(convTime), "convert-MB/s")
	b.ReportMetric(mbps(toolTime), "tar-x+mkfs-MB/s")
	b.ReportMetric(toolTime.Seconds()/convTime.Seconds(), "convert/tools")
}

// BenchmarkPullOCICached measures Pull of an OCI image already converted, by tag and by
// digest, with the registry gone: the path every VM start takes. Target: under 1 ms.
func BenchmarkPullOCICached(b *testing.B) {
	r := newTestRegistry(b)
	dg := r.push(b, "cached:1", testImage(b, "amd64", v1.Config{}, gzLayer(b, fileE("f", "x", 0o644, 0))))
	m := ociManager(b)
	ctx := context.Background()
	for _, ref := range []string{"cached:1", "cached@" + dg.String()} {
		if _, err := m.Pull(ctx, Source{OCI: r.ref(ref)}); err != nil {
			b.Fatal(err)
		}
	}
	r.srv.Close() // no network from here on
	for _, ref := range []string{"cached:1", "cached@" + dg.String()} {
		if _, err := name.ParseReference(r.ref(ref)); err != nil {
			b.Fatal(err)
		}
		b.Run(map[bool]string{true: "tag", false: "digest"}[ref == "cached:1"], func(b *testing.B) {
			for b.Loop() {
				if _, err := m.Pull(ctx, Source{OCI: r.ref(ref)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
