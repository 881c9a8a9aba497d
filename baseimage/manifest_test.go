package baseimage

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validManifest = `{
  "version": 1,
  "name": "ubuntu-24.04-6.1",
  "arch": "x86_64",
  "kernel": {"url": "vmlinux", "sha256": "` + sha64a + `", "size": 1234},
  "rootfs": {"url": "https://example.test/rootfs.squashfs", "sha256": "` + sha64b + `", "size": 99, "format": "squashfs"},
  "initrd": {"url": "../initrd.img", "sha256": "` + sha64a + `", "size": 5},
  "boot_args": "console=ttyS0 reboot=k panic=1",
  "firecracker": {"min": "1.10", "max": "1.14.2"}
}`

const (
	sha64a = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	sha64b = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

func TestParseManifestValid(t *testing.T) {
	m, err := ParseManifest([]byte(validManifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "ubuntu-24.04-6.1" || m.Kernel.Size != 1234 || m.Rootfs.Format != formatSquashfs ||
		m.Initrd == nil || m.Initrd.URL != "../initrd.img" || m.Firecracker == nil || m.Firecracker.Max != "1.14.2" {
		t.Errorf("parsed %+v", m)
	}
	minimal := `{"version":1,"name":"x","arch":"aarch64","kernel":{"url":"k","sha256":"` + sha64a + `","size":1},"rootfs":{"url":"r","sha256":"` + sha64a + `","size":1,"format":"ext4"}}`
	m, err = ParseManifest([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if m.Initrd != nil || m.Firecracker != nil || m.BootArgs != "" {
		t.Errorf("optional fields set: %+v", m)
	}
}

func TestParseManifestErrors(t *testing.T) {
	edit := func(old, repl string) string {
		if !strings.Contains(validManifest, old) {
			t.Fatalf("test bug: %q not in the manifest", old)
		}
		return strings.Replace(validManifest, old, repl, 1)
	}
	tests := []struct {
		name, doc, field, msg string
	}{
		{"not json", `{"version": 1,`, "", "malformed JSON"},
		{"not an object", `[1]`, "", "want a JSON object"},
		{"trailing data", validManifest + ` {}`, "", "trailing data"},
		{"unknown top-level key", edit(`"version": 1,`, `"version": 1, "extra": true,`), "extra", "unknown field"},
		{"duplicate key", edit(`"version": 1,`, `"version": 1, "name": "a",`), "name", "appears twice"},
		{"version 2", edit(`"version": 1`, `"version": 2`), "version", "version 2 is not supported"},
		{"version string", edit(`"version": 1`, `"version": "1"`), "version", "want an integer"},
		{"version float", edit(`"version": 1`, `"version": 1.5`), "version", "want an integer"},
		{"version missing", edit(`"version": 1,`, ``), "version", "missing"},
		{"bad name", edit(`"ubuntu-24.04-6.1"`, `"../etc"`), "name", "want 1 to 128"},
		{"unknown arch", edit(`"x86_64"`, `"riscv64"`), "arch", "unknown architecture"},
		{"kernel missing", edit(`"kernel": {"url": "vmlinux", "sha256": "`+sha64a+`", "size": 1234},`, ``), "kernel", "missing"},
		{"kernel null", edit(`"kernel": {"url": "vmlinux", "sha256": "`+sha64a+`", "size": 1234}`, `"kernel": null`), "kernel", "want a JSON object"},
		{"kernel unknown key", edit(`"size": 1234}`, `"size": 1234, "format": "ext4"}`), "kernel.format", "unknown field"},
		{"kernel sha short", edit(`"vmlinux", "sha256": "`+sha64a, `"vmlinux", "sha256": "abc`), "kernel.sha256", "64 lowercase hex"},
		{"kernel sha upper", edit(`"vmlinux", "sha256": "`+sha64a, `"vmlinux", "sha256": "`+strings.ToUpper(sha64a)), "kernel.sha256", "64 lowercase hex"},
		{"kernel sha missing", edit(`"url": "vmlinux", "sha256": "`+sha64a+`",`, `"url": "vmlinux",`), "kernel.sha256", "missing"},
		{"kernel size zero", edit(`"size": 1234`, `"size": 0`), "kernel.size", "above 0"},
		{"kernel size string", edit(`"size": 1234`, `"size": "1234"`), "kernel.size", "want an integer"},
		{"kernel url empty", edit(`"url": "vmlinux"`, `"url": ""`), "kernel.url", "empty"},
		{"rootfs format", edit(`"format": "squashfs"`, `"format": "qcow2"`), "rootfs.format", `want "ext4" or "squashfs"`},
		{"rootfs format missing", edit(`, "format": "squashfs"`, ``), "rootfs.format", "missing"},
		{"initrd unknown key", edit(`"size": 5}`, `"size": 5, "x": 1}`), "initrd.x", "unknown field"},
		{"boot args control", edit(`panic=1"`, `panic=1\n"`), "boot_args", "printable ASCII"},
		{"boot args number", edit(`"console=ttyS0 reboot=k panic=1"`, `7`), "boot_args", "want a string"},
		{"firecracker unknown", edit(`"max": "1.14.2"}`, `"max": "1.14.2", "exact": "1"}`), "firecracker.exact", "unknown field"},
		{"firecracker bad version", edit(`"min": "1.10"`, `"min": "one"`), "firecracker", "not of the form"},
		{"firecracker min above max", edit(`"min": "1.10"`, `"min": "1.15"`), "firecracker", "above max"},
		{"firecracker empty", edit(`{"min": "1.10", "max": "1.14.2"}`, `{}`), "firecracker", "set min, max or both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest([]byte(tc.doc))
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %v, want a *ManifestError", err)
			}
			if !errors.Is(err, ErrInvalidManifest) {
				t.Errorf("errors.Is(%v, ErrInvalidManifest) is false", err)
			}
			if me.Field != tc.field {
				t.Errorf("field %q, want %q (error %v)", me.Field, tc.field, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestResolveRef(t *testing.T) {
	base, _ := url.Parse("https://images.example.test/ci/v1/manifest.json")
	tests := []struct {
		base    *url.URL
		dir     string
		ref     string
		want    string
		wantErr string
	}{
		{base, "", "vmlinux", "https://images.example.test/ci/v1/vmlinux", ""},
		{base, "", "../shared/rootfs.ext4", "https://images.example.test/ci/shared/rootfs.ext4", ""},
		{base, "", "/abs/k", "https://images.example.test/abs/k", ""},
		{base, "", "https://other.test/k#frag", "https://other.test/k", ""},
		{base, "", "file:///etc/passwd", "", "only name http or https"},
		{base, "", "ftp://x/k", "", "only name http or https"},
		{nil, "/srv/images", "vmlinux", "/srv/images/vmlinux", ""},
		{nil, "/srv/images", "../k", "/srv/k", ""},
		{nil, "/srv/images", "/opt/k", "/opt/k", ""},
		{nil, "/srv/images", "file:///opt/k", "/opt/k", ""},
		{nil, "/srv/images", "file://remote/opt/k", "", "must be local"},
		{nil, "/srv/images", "https://h.test/k", "https://h.test/k", ""},
		{nil, "/srv/images", "https:///k", "", "no host"},
		{nil, "/srv/images", "gopher://h/k", "", "unsupported URL scheme"},
	}
	for _, tc := range tests {
		loc, err := resolveRef(tc.base, tc.dir, tc.ref, "kernel.url")
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidManifest) {
				t.Errorf("resolve %q: %v, want an error saying %q", tc.ref, err, tc.wantErr)
			}
			continue
		}
		if err != nil || loc.String() != tc.want {
			t.Errorf("resolve %q against %v/%q: %v, %v; want %s", tc.ref, tc.base, tc.dir, loc, err, tc.want)
		}
	}
}

// TestExampleManifests parses and validates every manifest shipped in assets/base-images, and
// checks that their relative URLs resolve next to the manifest.
func TestExampleManifests(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("..", "assets", "base-images", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 2 {
		t.Fatalf("want at least two example manifests in assets/base-images, found %v", paths)
	}
	m := testManager(t, nil)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		mf, err := ParseManifest(data)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		m.arch = mf.Arch
		abs, _ := filepath.Abs(p)
		plan, err := m.manifestPlan(data, abs, nil, filepath.Dir(abs))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		for _, loc := range plan.locs {
			if loc.url != nil || filepath.Dir(loc.path) != filepath.Dir(abs) {
				t.Errorf("%s: artifact %s does not resolve next to the manifest", p, loc)
			}
		}
		hosted, _ := url.Parse("https://images.example.test/smartvm/" + filepath.Base(p))
		if _, err := m.manifestPlan(data, hosted.String(), hosted, ""); err != nil {
			t.Errorf("%s as a hosted manifest: %v", p, err)
		}
	}
}

func TestVersionRange(t *testing.T) {
	tests := []struct {
		r    VersionRange
		v    string
		want bool
	}{
		{VersionRange{Min: "1.14", Max: "1.14"}, "1.14.0", true},
		{VersionRange{Min: "1.14", Max: "1.14"}, "v1.14.9", true},
		{VersionRange{Min: "1.14", Max: "1.14"}, "1.15.0", false},
		{VersionRange{Min: "1.14", Max: "1.14"}, "1.13.9", false},
		{VersionRange{Min: "1.10.1"}, "1.10.0", false},
		{VersionRange{Min: "1.10.1"}, "2.0.0", true},
		{VersionRange{Max: "1.12.0"}, "1.12.1", false},
		{VersionRange{Max: "1"}, "1.99.0", true},
	}
	for _, tc := range tests {
		got, err := tc.r.Contains(tc.v)
		if err != nil || got != tc.want {
			t.Errorf("%+v contains %s: %v, %v; want %v", tc.r, tc.v, got, err, tc.want)
		}
	}
	if _, err := (VersionRange{Min: "1"}).Contains("latest"); err == nil {
		t.Error("Contains accepted a non-version")
	}
}

func TestSourceValidate(t *testing.T) {
	bad := []Source{
		{},
		{Preset: "newest"},
		{Preset: PresetLatest, ManifestURL: "https://x.test/m.json"},
		{Preset: PresetLatest, Release: "1.14"},
		{Preset: PresetLatest, Release: "v1.14/../../x"},
		{ManifestURL: "https://x.test/m.json", Release: "v1.14"},
		{ManifestURL: "file:///etc/m.json"},
		{ManifestURL: "not a url"},
	}
	for _, s := range bad {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v: validated", s)
		}
	}
	good := []Source{{Preset: PresetLTS}, {Preset: PresetLatest, Release: "v1.16"}, {ManifestURL: "http://h.test/m.json"}, {ManifestPath: "m.json"}}
	for _, s := range good {
		if err := s.Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(validManifest))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":2,"name":"x"}`))
	f.Add([]byte(`{"kernel":{"url":"a","url":"b"}}`))
	f.Add([]byte(`{"version":1,"name":"x","arch":"x86_64","kernel":{"url":"k","sha256":"` + sha64a + `","size":1},"rootfs":{"url":"r","sha256":"` + sha64a + `","size":1,"format":"ext4"},"firecracker":{"min":"1"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a *ManifestError", err)
			}
			return
		}
		// Whatever parses must satisfy the schema's invariants.
		if m.Version != ManifestVersion || !nameRE().MatchString(m.Name) || (m.Arch != ArchX86_64 && m.Arch != ArchAarch64) {
			t.Fatalf("accepted %+v", m)
		}
		for _, f := range []*ManifestFile{&m.Kernel, &m.Rootfs, m.Initrd} {
			if f != nil && (f.URL == "" || !sha256RE().MatchString(f.SHA256) || f.Size <= 0) {
				t.Fatalf("accepted file %+v", f)
			}
		}
		if m.Rootfs.Format != formatExt4 && m.Rootfs.Format != formatSquashfs {
			t.Fatalf("accepted rootfs format %q", m.Rootfs.Format)
		}
		if m.Firecracker != nil && m.Firecracker.Validate() != nil {
			t.Fatalf("accepted range %+v", m.Firecracker)
		}
	})
}
