package fakefc

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/smartvm/smartvm/internal/fcspec"
)

// DefaultVersion is the Firecracker release the fake mimics when Options.Version is empty.
const DefaultVersion = "1.14.2"

// release is what the fake knows about the Firecracker release it mimics: its spec, the body
// types of its endpoints and the behaviours that changed between releases.
type release struct {
	version             string // as reported, without "v": "1.14.2"
	major, minor, patch int
	specVersion         string // the embedded spec it uses

	// The spec and body types, loaded on first use (load): the command line needs neither.
	once    sync.Once
	loadErr error
	spec    *openapi3.T
	bodies  map[string]*rtype // "PUT /drives/{drive_id}" → body type
}

// snapshotFormats is the snapshot data format each minor release writes and reads
// (SNAPSHOT_VERSION in Firecracker's persist.rs).
var snapshotFormats = map[int]string{
	7: "1.0.0", 8: "2.0.0", 9: "3.0.0", 10: "4.0.0", 11: "5.0.0", 12: "6.0.0",
	13: "8.0.0", 14: "8.0.0", 15: "9.0.0", 16: "10.0.0", 17: "11.0.0",
}

var releaseCache sync.Map // version → *release; specs are immutable once built

// loadRelease returns the release for version ("1.14.2", "v1.14.2"). A patch release that is
// not embedded uses the embedded spec of the same minor release (1.14.1 uses 1.14.2's).
func loadRelease(version string) (*release, error) {
	if version == "" {
		version = DefaultVersion
	}
	version = strings.TrimPrefix(version, "v")
	if r, ok := releaseCache.Load(version); ok {
		return r.(*release), nil
	}
	major, minor, patch, err := parseVersion(version)
	if err != nil {
		return nil, err
	}
	if _, ok := snapshotFormats[minor]; major != 1 || !ok {
		return nil, fmt.Errorf("fake firecracker: release %s is not supported (have 1.7 to 1.17)", version)
	}
	specVersion := ""
	for _, r := range fcspec.Releases() {
		if r.Version == version {
			specVersion = r.Version
			break
		}
		if ma, mi, _, err := parseVersion(r.Version); err == nil && ma == major && mi == minor {
			specVersion = r.Version
		}
	}
	if specVersion == "" {
		var have []string
		for _, r := range fcspec.Releases() {
			have = append(have, r.Version)
		}
		return nil, fmt.Errorf("fake firecracker: no embedded spec for release %s or its minor release (have %s)",
			version, strings.Join(have, ", "))
	}
	r := &release{version: version, major: major, minor: minor, patch: patch, specVersion: specVersion}
	actual, _ := releaseCache.LoadOrStore(version, r)
	return actual.(*release), nil
}

// load reads the release's spec and derives its body types, once.
func (r *release) load() error {
	r.once.Do(func() {
		doc, err := loadSpec(r.specVersion)
		if err != nil {
			r.loadErr = err
			return
		}
		bodies := map[string]*rtype{}
		for path, item := range doc.Paths.Map() {
			for method, op := range item.Operations() {
				if t := bodyType(method+" "+path, op); t != nil {
					bodies[method+" "+path] = t
				}
			}
		}
		r.spec, r.bodies = doc, bodies
	})
	return r.loadErr
}

func parseVersion(v string) (major, minor, patch int, err error) {
	core, _, _ := strings.Cut(v, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return 0, 0, 0, fmt.Errorf("fake firecracker: version %q is not X.Y.Z", v)
	}
	var n [3]int
	for i, p := range parts {
		if n[i], err = strconv.Atoi(p); err != nil {
			return 0, 0, 0, fmt.Errorf("fake firecracker: version %q is not X.Y.Z", v)
		}
	}
	return n[0], n[1], n[2], nil
}

// atLeast reports whether the release is 1.minor or newer.
func (r *release) atLeast(minor int) bool { return r.major > 1 || r.minor >= minor }

// snapshotFormat is the snapshot data format version, like "8.0.0".
func (r *release) snapshotFormat() string { return snapshotFormats[r.minor] }

// hasOp reports whether the release serves method on the spec path (such as
// "/drives/{drive_id}"). DELETE on devices exists from v1.16 though no spec lists it.
func (r *release) hasOp(method, specPath string) bool {
	if method == "DELETE" {
		switch specPath {
		case "/drives/{drive_id}", "/network-interfaces/{iface_id}", "/pmem/{id}":
			return r.atLeast(16)
		}
		return false
	}
	item := r.spec.Paths.Value(specPath)
	return item != nil && item.GetOperation(method) != nil
}

// legacyErrors: before v1.10 some device errors were formatted with Rust's Debug.
func (r *release) legacyErrors() bool { return !r.atLeast(10) }
