// Package fcspec embeds Firecracker's own API specifications, one per release that smartvm
// supports, so that the fake Firecracker and the client tests can check request bodies against
// the exact schema a given release accepts.
package fcspec

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

//go:embed spec/*.yaml
var files embed.FS

// Release is one embedded specification.
type Release struct {
	// Version is the release without a leading "v", such as "1.14.2" or "1.17.0-dev".
	Version string
	// File is the embedded file name, such as "firecracker-v1.14.2.yaml".
	File string
}

// Releases lists the embedded specifications from the oldest release to the newest; the
// development snapshot of main comes last.
func Releases() []Release {
	entries, err := fs.ReadDir(files, "spec")
	if err != nil {
		panic(fmt.Sprintf("fcspec: embedded specs unreadable: %v", err)) // broken build, not input
	}
	var out []Release
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		v := strings.TrimSuffix(strings.TrimPrefix(name, "firecracker-"), ".yaml")
		v = strings.TrimPrefix(strings.TrimPrefix(v, "main-"), "v")
		out = append(out, Release{Version: v, File: name})
	}
	slices.SortFunc(out, func(a, b Release) int { return compare(a.Version, b.Version) })
	return out
}

// Newest is the newest embedded specification (main's development version).
func Newest() Release {
	r := Releases()
	return r[len(r)-1]
}

// Read returns the specification of the given release ("1.14.2", "v1.14.2" or "1.17.0-dev").
func Read(version string) ([]byte, error) {
	version = strings.TrimPrefix(version, "v")
	for _, r := range Releases() {
		if r.Version == version {
			return files.ReadFile(path.Join("spec", r.File))
		}
	}
	return nil, fmt.Errorf("no embedded Firecracker spec for version %q (have %s)", version, strings.Join(versions(), ", "))
}

// ReadFile returns the bytes of one embedded file by its name.
func ReadFile(name string) ([]byte, error) { return files.ReadFile(path.Join("spec", name)) }

func versions() []string {
	var vs []string
	for _, r := range Releases() {
		vs = append(vs, r.Version)
	}
	return vs
}

// compare orders "X.Y.Z[-pre]" versions numerically; a pre-release sorts after every release
// with a lower X.Y.Z, which is all these specs need.
func compare(a, b string) int {
	pa, pb := parts(a), parts(b)
	for i := range 3 {
		if c := pa[i] - pb[i]; c != 0 {
			return c
		}
	}
	return strings.Compare(a, b)
}

func parts(v string) [3]int {
	var out [3]int
	v, _, _ = strings.Cut(v, "-")
	for i, s := range strings.SplitN(v, ".", 3) {
		out[i], _ = strconv.Atoi(s)
	}
	return out
}
