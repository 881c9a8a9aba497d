package baseimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smartvm/smartvm/internal/safedir"
)

// ManifestVersion is the manifest schema version this package reads.
const ManifestVersion = 1

// maxManifestSize caps how much of a manifest is read.
const maxManifestSize = 1 << 20

// Artifact roles and rootfs formats.
const (
	roleKernel     = "kernel"
	roleRootfs     = "rootfs"
	roleInitrd     = "initrd"
	formatExt4     = "ext4"
	formatSquashfs = "squashfs"
)

// Manifest describes a hosted base image. See the package documentation for the schema.
type Manifest struct {
	Version     int           `json:"version"`
	Name        string        `json:"name"`
	Arch        string        `json:"arch"`
	Kernel      ManifestFile  `json:"kernel"`
	Rootfs      ManifestFile  `json:"rootfs"`
	Initrd      *ManifestFile `json:"initrd,omitempty"`
	BootArgs    string        `json:"boot_args"`
	Firecracker *VersionRange `json:"firecracker,omitempty"`
}

// ManifestFile is one artifact of a manifest. Format is set for the rootfs only.
type ManifestFile struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Format string `json:"format,omitempty"`
}

var (
	nameRE   = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	sha256RE = lazyRegexp(`^[0-9a-f]{64}$`)
)

// maxBootArgs bounds boot_args; Firecracker's own limit per architecture is lower or equal.
const maxBootArgs = 4096

// ParseManifest decodes and validates a manifest. Unknown or repeated keys, missing required
// fields, an unsupported version and malformed values are rejected with a *ManifestError that
// names the field. URLs are not resolved: relative URLs stay relative.
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > maxManifestSize {
		return nil, &ManifestError{Err: fmt.Errorf("larger than %d bytes", maxManifestSize)}
	}
	top, err := decodeObject(data, "", []string{"version", "name", "arch", "kernel", "rootfs", "initrd", "boot_args", "firecracker"})
	if err != nil {
		return nil, err
	}
	var m Manifest
	// version first: a newer schema may have changed everything else.
	if err := decodeRequired(top, "version", &m.Version); err != nil {
		return nil, err
	}
	if m.Version != ManifestVersion {
		return nil, &ManifestError{Field: "version", Err: fmt.Errorf("version %d is not supported; this library reads version %d", m.Version, ManifestVersion)}
	}
	if err := decodeRequired(top, "name", &m.Name); err != nil {
		return nil, err
	}
	if !nameRE().MatchString(m.Name) {
		return nil, &ManifestError{Field: "name", Err: fmt.Errorf("%q: want 1 to 128 of A-Z a-z 0-9 . _ + -, starting with a letter or digit", m.Name)}
	}
	if err := decodeRequired(top, "arch", &m.Arch); err != nil {
		return nil, err
	}
	if m.Arch != ArchX86_64 && m.Arch != ArchAarch64 {
		return nil, &ManifestError{Field: "arch", Err: fmt.Errorf("unknown architecture %q: want %s or %s", m.Arch, ArchX86_64, ArchAarch64)}
	}
	if m.Kernel, err = decodeFile(top, "kernel", false); err != nil {
		return nil, err
	}
	if m.Rootfs, err = decodeFile(top, "rootfs", true); err != nil {
		return nil, err
	}
	if _, ok := top["initrd"]; ok {
		f, err := decodeFile(top, "initrd", false)
		if err != nil {
			return nil, err
		}
		m.Initrd = &f
	}
	if _, ok := top["boot_args"]; ok {
		if err := decodeRequired(top, "boot_args", &m.BootArgs); err != nil {
			return nil, err
		}
	}
	if err := checkBootArgs(m.BootArgs); err != nil {
		return nil, &ManifestError{Field: "boot_args", Err: err}
	}
	if raw, ok := top["firecracker"]; ok {
		fc, err := decodeObject(raw, "firecracker", []string{"min", "max"})
		if err != nil {
			return nil, err
		}
		var r VersionRange
		if _, ok := fc["min"]; ok {
			if err := decodeRequired(fc, "min", &r.Min); err != nil {
				return nil, prefixField("firecracker", err)
			}
		}
		if _, ok := fc["max"]; ok {
			if err := decodeRequired(fc, "max", &r.Max); err != nil {
				return nil, prefixField("firecracker", err)
			}
		}
		if err := r.Validate(); err != nil {
			return nil, &ManifestError{Field: "firecracker", Err: err}
		}
		m.Firecracker = &r
	}
	return &m, nil
}

func checkBootArgs(s string) error {
	if len(s) > maxBootArgs {
		return fmt.Errorf("longer than %d bytes", maxBootArgs)
	}
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("contains %q: only printable ASCII is allowed", r)
		}
	}
	return nil
}

// decodeFile decodes {url, sha256, size[, format]} at field name.
func decodeFile(top map[string]json.RawMessage, name string, rootfs bool) (ManifestFile, error) {
	var f ManifestFile
	raw, ok := top[name]
	if !ok {
		return f, &ManifestError{Field: name, Err: errors.New("missing")}
	}
	keys := []string{"url", "sha256", "size"}
	if rootfs {
		keys = append(keys, "format")
	}
	obj, err := decodeObject(raw, name, keys)
	if err != nil {
		return f, err
	}
	for _, k := range keys {
		var dst any
		switch k {
		case "url":
			dst = &f.URL
		case "sha256":
			dst = &f.SHA256
		case "size":
			dst = &f.Size
		case "format":
			dst = &f.Format
		}
		if err := decodeRequired(obj, k, dst); err != nil {
			return f, prefixField(name, err)
		}
	}
	switch {
	case f.URL == "":
		return f, &ManifestError{Field: name + ".url", Err: errors.New("empty")}
	case !sha256RE().MatchString(f.SHA256):
		return f, &ManifestError{Field: name + ".sha256", Err: fmt.Errorf("%q: want 64 lowercase hex digits", f.SHA256)}
	case f.Size <= 0:
		return f, &ManifestError{Field: name + ".size", Err: fmt.Errorf("%d: want the size in bytes, above 0", f.Size)}
	case rootfs && f.Format != formatExt4 && f.Format != formatSquashfs:
		return f, &ManifestError{Field: name + ".format", Err: fmt.Errorf("%q: want %q or %q", f.Format, formatExt4, formatSquashfs)}
	}
	if _, err := url.Parse(f.URL); err != nil {
		return f, &ManifestError{Field: name + ".url", Err: err}
	}
	return f, nil
}

// decodeRequired decodes obj[key] into dst strictly (no type coercion).
func decodeRequired(obj map[string]json.RawMessage, key string, dst any) error {
	raw, ok := obj[key]
	if !ok {
		return &ManifestError{Field: key, Err: errors.New("missing")}
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return &ManifestError{Field: key, Err: errors.New("null")}
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &ManifestError{Field: key, Err: fmt.Errorf("got a JSON %s, want %s", te.Value, jsonKind(dst))}
		}
		return &ManifestError{Field: key, Err: err}
	}
	return nil
}

func jsonKind(dst any) string {
	switch dst.(type) {
	case *string:
		return "a string"
	case *int, *int64:
		return "an integer"
	}
	return "another type"
}

func prefixField(prefix string, err error) error {
	var me *ManifestError
	if errors.As(err, &me) {
		return &ManifestError{Field: prefix + "." + me.Field, Err: me.Err}
	}
	return err
}

// decodeObject reads one JSON object whose keys must be among allowed, each at most once, and
// returns its raw values. path names the object in errors ("" for the top level).
func decodeObject(data []byte, path string, allowed []string) (map[string]json.RawMessage, error) {
	field := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, &ManifestError{Field: path, Err: fmt.Errorf("malformed JSON: %w", err)}
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, &ManifestError{Field: path, Err: errors.New("want a JSON object")}
	}
	out := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, &ManifestError{Field: path, Err: fmt.Errorf("malformed JSON: %w", err)}
		}
		key, _ := tok.(string) // object keys are always strings
		if !slices.Contains(allowed, key) {
			return nil, &ManifestError{Field: field(key), Err: fmt.Errorf("unknown field (allowed here: %s)", strings.Join(allowed, ", "))}
		}
		if _, dup := out[key]; dup {
			return nil, &ManifestError{Field: field(key), Err: errors.New("appears twice")}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, &ManifestError{Field: field(key), Err: fmt.Errorf("malformed JSON: %w", err)}
		}
		out[key] = raw
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, &ManifestError{Field: path, Err: fmt.Errorf("malformed JSON: %w", err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &ManifestError{Field: path, Err: errors.New("trailing data after the JSON object")}
	}
	return out, nil
}

// location is where an artifact is read from: an http(s) URL or a local file.
type location struct {
	url  *url.URL // set for http and https
	path string   // set for local files
}

func (l location) String() string {
	if l.url != nil {
		return l.url.String()
	}
	return l.path
}

// resolveRef resolves an artifact URL against the manifest's own location: base is the
// manifest URL for a hosted manifest, or nil with baseDir the manifest's directory for a
// manifest file. A hosted manifest may name only http(s) artifacts; a manifest file may also
// name local files, relative to its directory or as file:// URLs.
func resolveRef(base *url.URL, baseDir, ref, field string) (location, error) {
	u, err := url.Parse(ref)
	if err != nil {
		return location{}, &ManifestError{Field: field, Err: err}
	}
	if base != nil {
		abs := base.ResolveReference(u)
		if abs.Scheme != "http" && abs.Scheme != "https" {
			return location{}, &ManifestError{Field: field, Err: fmt.Errorf("%q: a hosted manifest may only name http or https URLs", ref)}
		}
		abs.Fragment = ""
		return location{url: abs}, nil
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return location{}, &ManifestError{Field: field, Err: fmt.Errorf("%q: no host", ref)}
		}
		return location{url: u}, nil
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return location{}, &ManifestError{Field: field, Err: fmt.Errorf("%q: file URLs must be local", ref)}
		}
		return location{path: filepath.Clean(u.Path)}, nil
	case "":
		p := u.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(baseDir, p)
		}
		return location{path: filepath.Clean(p)}, nil
	}
	return location{}, &ManifestError{Field: field, Err: fmt.Errorf("%q: unsupported URL scheme %q", ref, u.Scheme)}
}

// ManifestFileFor describes a local file for a manifest that is published next to it: the URL
// is the file's base name (relative, so it resolves next to the manifest), with its sha256 and
// size. Set Format yourself for a rootfs.
func ManifestFileFor(path string) (ManifestFile, error) {
	f, err := safedir.OpenInput(path, false, false)
	if err != nil {
		return ManifestFile{}, fmt.Errorf("describe %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ManifestFile{}, fmt.Errorf("describe %s: %w", path, err)
	}
	return ManifestFile{URL: filepath.Base(path), SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// Validate checks m against the schema, exactly as ParseManifest would check its JSON.
func (m *Manifest) Validate() error {
	data, err := json.Marshal(m)
	if err != nil {
		return &ManifestError{Err: err}
	}
	_, err = ParseManifest(data)
	return err
}
