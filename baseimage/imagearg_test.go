package baseimage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParseImageArg checks the documented order: hello, the presets, a manifest (an existing
// file, an http(s) URL ending in .json), else an OCI reference.
func TestParseImageArg(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.json")
	os.WriteFile(manifest, []byte("{}"), 0o644)
	// A file named like an image is a manifest: files come before references.
	t.Chdir(dir)
	os.WriteFile("alpine", []byte("{}"), 0o644)
	for _, tc := range []struct {
		arg  string
		want Source
		err  string
	}{
		{"latest", Source{Preset: PresetLatest}, ""},
		{"lts", Source{Preset: PresetLTS}, ""},
		{manifest, Source{ManifestPath: manifest}, ""},
		{"alpine", Source{ManifestPath: filepath.Join(dir, "alpine")}, ""},
		{"https://example.com/images/m.json", Source{ManifestURL: "https://example.com/images/m.json"}, ""},
		{"alpine:3.20", Source{OCI: "alpine:3.20"}, ""},
		{"debian", Source{OCI: "debian"}, ""},
		{"ghcr.io/o/i@sha256:" + strings.Repeat("a", 64), Source{OCI: "ghcr.io/o/i@sha256:" + strings.Repeat("a", 64)}, ""},
		{"localhost:5000/img:tag", Source{OCI: "localhost:5000/img:tag"}, ""},
		{"https://example.com/image", Source{}, "ends in .json"},
		{"ghcr.io/o/i@sha256:short", Source{}, "is not latest, lts"},
		{"Upper/Case", Source{}, "OCI image reference"},
		{dir, Source{}, "is a directory"},
		{"", Source{}, "empty image"},
		{"images/typo.json", Source{}, "no such manifest file"},
	} {
		got, err := ParseImageArg(tc.arg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseImageArg(%q) = %+v, %v; want an error with %q", tc.arg, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseImageArg(%q) = %+v, %v; want %+v", tc.arg, got, err, tc.want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("ParseImageArg(%q) gives an invalid source: %v", tc.arg, err)
		}
	}
	if _, err := ParseImageArg("hello"); !errors.Is(err, ErrHelloImage) {
		t.Errorf("hello: %v, want ErrHelloImage", err)
	}
	if s := (Source{OCI: "alpine:3.20"}).String(); s != "image alpine:3.20" {
		t.Errorf("String() = %q", s)
	}
	if err := (Source{OCI: "alpine", Preset: "latest"}).Validate(); err == nil {
		t.Error("two origins accepted")
	}
}
