package testutil

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// OCIRegistry starts an in-process registry (go-containerregistry's pkg/registry), stopped
// when the test ends, and returns its HOST:PORT. wrap, if not nil, wraps its handler (to
// demand credentials, or to act as a proxy that is the registry too: a proxied request
// arrives with an absolute URL, which the registry serves by its path).
func OCIRegistry(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// PushOCIImage serves a one-layer linux/amd64 image holding files (path to content, mode
// 0644, root's) with the given Cmd from a new OCIRegistry. It returns the image's reference,
// HOST:PORT/repoTag, and its manifest digest.
func PushOCIImage(t testing.TB, repoTag string, files map[string]string, cmd []string) (ref, digest string) {
	t.Helper()
	ref = OCIRegistry(t, nil) + "/" + repoTag
	return ref, PushOCIImageTo(t, ref, files, cmd)
}

// PushOCIImageTo pushes the image PushOCIImage makes to ref and returns its manifest digest.
func PushOCIImageTo(t testing.TB, ref string, files map[string]string, cmd []string) (digest string) {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	layer := make([]OCIEntry, 0, len(names))
	for _, n := range names {
		layer = append(layer, OCIEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Body: files[n]})
	}
	return PushOCILayers(t, ref, v1.Config{Cmd: cmd}, layer)
}

// OCIEntry is one tar entry of a layer PushOCILayers writes: the header and, for a regular
// file, its content (Header.Size is set from Body).
type OCIEntry struct {
	Header tar.Header
	Body   string
}

// PushOCILayers pushes a linux/amd64 image with layers (the first at the bottom; whiteouts
// are entries named .wh.NAME or .wh..wh..opq) and the config cfg to ref, and returns its
// manifest digest.
func PushOCILayers(t testing.TB, ref string, cfg v1.Config, layers ...[]OCIEntry) (digest string) {
	t.Helper()
	img := empty.Image
	for _, entries := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			h := e.Header
			h.Size = int64(len(e.Body))
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatalf("layer entry %s: %v", h.Name, err)
			}
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return PushImage(t, ref, img).String()
}

// PushImage pushes img to ref (HOST:PORT/repo:tag) and returns its manifest digest.
func PushImage(t testing.TB, ref string, img v1.Image) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
