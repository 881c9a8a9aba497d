package fcrelease

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/baseimage"
)

func TestNormalizeTag(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"1.14.2": "v1.14.2", "v1.7.0": "v1.7.0"} {
		if got, err := NormalizeTag(in); err != nil || got != want {
			t.Errorf("NormalizeTag(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"latest", "v1.14", "1.14.2-rc1", ""} {
		if _, err := NormalizeTag(in); err == nil {
			t.Errorf("NormalizeTag(%q) accepted it", in)
		}
	}
}

// fakeFiles serves downloads from a map and records them.
type fakeFiles struct {
	files map[string]string
	got   []string
}

func (f *fakeFiles) Download(_ context.Context, rawURL, dst, sha256, _ string) (string, error) {
	f.got = append(f.got, rawURL)
	body, ok := f.files[rawURL]
	if !ok {
		return "", baseimage.ErrNotFound
	}
	if sha256 != "" {
		return "", baseimage.ErrChecksum // the test's tarballs are never the published ones
	}
	return "", os.WriteFile(dst, []byte(body), 0o600)
}

// Install goes through the Downloader, and a release that is not there says what to check;
// a checksum mismatch installs nothing.
func TestInstallUsesDownloader(t *testing.T) {
	t.Parallel()
	files := &fakeFiles{files: map[string]string{
		"https://mirror.example/r/download/v1.14.2/firecracker-v1.14.2-x86_64.tgz.sha256.txt": strings.Repeat("a", 64) + "  firecracker-v1.14.2-x86_64.tgz\n",
		"https://mirror.example/r/download/v1.14.2/firecracker-v1.14.2-x86_64.tgz":            "not the published tarball",
	}}
	site, err := NewSite("https://mirror.example/r/", "x86_64", http.DefaultClient, files)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bin")
	var out strings.Builder
	_, err = site.Install(context.Background(), "v1.14.2", dir, &out)
	if !errors.Is(err, baseimage.ErrChecksum) || !strings.Contains(err.Error(), "nothing was installed") {
		t.Errorf("install with a bad tarball: %v", err)
	}
	if len(files.got) != 2 {
		t.Errorf("downloads %q, want the checksum file and the tarball", files.got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left in %s: %v", dir, ents)
	}
	_, err = site.Install(context.Background(), "v1.99.0", dir, &out)
	if !errors.Is(err, baseimage.ErrNotFound) || !strings.Contains(err.Error(), "is there a release for x86_64?") {
		t.Errorf("install of a missing release: %v", err)
	}
	if _, err := NewSite("ftp://mirror.example", "x86_64", http.DefaultClient, files); err == nil {
		t.Error("NewSite accepted an ftp URL")
	}
}

// A tarball with the firecracker binary twice is refused, and neither copy is left behind.
func TestExtractDuplicateEntry(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, body := range []string{"first", "second"} {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "release-v1.14.2-x86_64/firecracker-v1.14.2-x86_64", Mode: 0o755, Size: int64(len(body))}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := extract(&buf, "v1.14.2", "x86_64", dir); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("extract of a tarball with firecracker twice: %v, want an error saying so", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left in %s: %v", dir, ents)
	}
}
