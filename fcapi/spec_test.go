package fcapi

//go:generate go test -run TestFeatureTableMatchesSpecs -update

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/smartvm/smartvm/fcapi/internal/specgate"
	"github.com/smartvm/smartvm/internal/fcspec"
	"github.com/smartvm/smartvm/internal/testutil"
)

// specFile is one release's Firecracker API spec.
type specFile struct {
	version Version
	name    string
	data    []byte
}

var specName = regexp.MustCompile(`^firecracker-(?:main-)?v?(.+)\.yaml$`)

// specFiles returns the specs, oldest first: from ../shared/firecracker/spec next to the module
// root when that folder exists (it must under CI=true), else the copies embedded in
// internal/fcspec.
func specFiles(t testing.TB) []specFile {
	t.Helper()
	dir := filepath.Join(moduleRoot(t), "..", "shared", "firecracker", "spec")
	var out []specFile
	if _, err := os.Stat(dir); err == nil {
		names, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range names {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, newSpecFile(t, filepath.Base(p), data))
		}
	} else {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the Firecracker specs folder %s is missing (CI=true requires it): %v", dir, err)
		}
		t.Logf("%s missing; using the specs embedded in internal/fcspec", dir)
		for _, r := range fcspec.Releases() {
			data, err := fcspec.ReadFile(r.File)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, newSpecFile(t, r.File, data))
		}
	}
	if len(out) < 2 {
		t.Fatalf("found %d Firecracker specs, want at least 2", len(out))
	}
	slices.SortFunc(out, func(a, b specFile) int { return a.version.Compare(b.version) })
	return out
}

func newSpecFile(t testing.TB, name string, data []byte) specFile {
	t.Helper()
	m := specName.FindStringSubmatch(name)
	if m == nil {
		t.Fatalf("spec file %s: name is not firecracker-[main-]vX.Y.Z.yaml", name)
	}
	v, err := ParseVersion(m[1])
	if err != nil {
		t.Fatalf("spec file %s: %v", name, err)
	}
	return specFile{version: v, name: name, data: data}
}

func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = up
	}
}

func loadSpec(t testing.TB, s specFile) *openapi3.T {
	t.Helper()
	doc, err := specgate.Load(s.data)
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	return doc
}

const featuresFile = "features_gen.go"

// TestFeatureTableMatchesSpecs derives the version gate's table from the specs and compares it
// with features_gen.go; -update (or go generate) rewrites the file.
func TestFeatureTableMatchesSpecs(t *testing.T) {
	t.Parallel()
	var specs []specgate.Spec
	for _, s := range specFiles(t) {
		specs = append(specs, specgate.Spec{Version: s.version.String(), Doc: loadSpec(t, s)})
	}
	fs, err := specgate.Derive(specs)
	if err != nil {
		t.Fatal(err)
	}
	src, err := specgate.Render("fcapi", "specFeatures", `"go test -run TestFeatureTableMatchesSpecs -update" from Firecracker's API specs`, fs)
	if err != nil {
		t.Fatal(err)
	}
	if testutil.Update() {
		if err := os.WriteFile(featuresFile, src, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	have, err := os.ReadFile(featuresFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, src) {
		t.Errorf("%s is out of date with the specs; run go generate ./fcapi (go test -run TestFeatureTableMatchesSpecs -update). Derived:\n%s", featuresFile, src)
	}
}

// TestDerivedTableHasKnownFeatures pins the facts of the notes' version checklist, so that a
// change in the derivation that loses them fails here and not only in production.
func TestDerivedTableHasKnownFeatures(t *testing.T) {
	v := func(s string) Version {
		x, err := ParseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, tc := range []struct {
		op, field, value string
		since            Version
	}{
		{op: "PUT /serial", since: v("1.14.0")},
		{op: "PUT /pmem/{id}", since: v("1.14.0")},
		{op: "PUT /hotplug/memory", since: v("1.14.0")},
		{op: "PATCH /balloon/hinting/start", since: v("1.14.0")},
		{op: "PATCH /pmem/{id}", since: v("1.16.0")},
		{op: "PUT /balloon", field: "free_page_hinting", since: v("1.14.0")},
		{op: "PUT /network-interfaces/{iface_id}", field: "mtu", since: v("1.16.0")},
		{op: "PUT /serial", field: "rate_limiter", since: v("1.16.0")},
		{op: "PUT /pmem/{id}", field: "rate_limiter", since: v("1.16.0")},
		{op: "PUT /snapshot/load", field: "vsock_override", since: v("1.16.0")},
		{op: "PUT /snapshot/load", field: "network_overrides", since: v("1.12.0")},
		{op: "PUT /snapshot/load", field: "track_dirty_pages", since: v("1.13.0")},
		{op: "PUT /snapshot/load", field: "huge_pages", since: v("1.17.0-dev")},
		{op: "PUT /mmds/config", field: "imds_compat", since: v("1.13.0")},
		{op: "PUT /metrics", field: "emit_id", since: v("1.17.0-dev")},
		{op: "PUT /machine-config", field: "huge_pages", value: "Transparent", since: v("1.17.0-dev")},
		{op: "DELETE /drives/{drive_id}", since: v("1.16.0")},
		{op: configFileOp, field: "pmem", since: v("1.14.0")},
		{op: configFileOp, field: "cpu-config", since: v("1.13.0")},
		{op: configFileOp, field: "network-interfaces.mtu", since: v("1.16.0")},
	} {
		o := specTable.ops[tc.op]
		if o == nil {
			t.Errorf("%s: not in the table", tc.op)
			continue
		}
		got := o.since
		if tc.field != "" {
			f := o.fields[tc.field]
			switch {
			case f == nil:
				t.Errorf("%s field %s: not in the table", tc.op, tc.field)
				continue
			case tc.value != "":
				got = f.values[tc.value]
			default:
				got = f.since
			}
		}
		if got != tc.since {
			t.Errorf("%s %s %s: since %v, want %v", tc.op, tc.field, tc.value, got, tc.since)
		}
	}
	// What every supported release has is not gated.
	for _, op := range []string{"GET /", "GET /version", "PUT /actions", "PUT /boot-source", "PUT /drives/{drive_id}", "PATCH /vm"} {
		if o := specTable.ops[op]; o != nil && !o.since.IsZero() {
			t.Errorf("%s gated since %v; every spec has it", op, o.since)
		}
	}
	// Nor what the older specs leave out but v1.7.0 accepts.
	for _, f := range specOmissions {
		if since := specTable.since(f.op, f.field); !since.IsZero() {
			t.Errorf("%s field %s gated since %v; v1.7.0 accepts it", f.op, f.field, since)
		}
	}
}

// opPattern turns "PUT /drives/{drive_id}" into a pattern for the concrete path.
func opPattern(op string) *regexp.Regexp {
	_, path, _ := strings.Cut(op, " ")
	return regexp.MustCompile("^" + regexp.MustCompile(`\\\{[a-z_]+\\\}`).ReplaceAllString(regexp.QuoteMeta(path), `[A-Za-z0-9_]+`) + "$")
}

var (
	preparedMu   sync.Mutex
	preparedDocs = map[string]*openapi3.T{}
)

// preparedSpec loads a spec for validation, once per test binary: known spec errors fixed, and
// objects closed except those named in open. The result is shared: only read it.
func preparedSpec(t testing.TB, s specFile, open []string) *openapi3.T {
	t.Helper()
	k := s.name + "|" + strings.Join(open, ",")
	preparedMu.Lock()
	defer preparedMu.Unlock()
	if doc := preparedDocs[k]; doc != nil {
		return doc
	}
	doc := loadSpec(t, s)
	specgate.FixKnownDefects(doc)
	specgate.CloseObjects(doc, open)
	preparedDocs[k] = doc
	return doc
}

// TestRequestsValidateAgainstSpecs sends every endpoint case to a client that claims each
// release whose spec has the endpoint, and validates what it sends against that spec, with
// objects closed as Firecracker closes them. Where the version gate refuses instead, the
// refusal must be right: the newest body must use something that release's spec lacks (checked
// with every object closed, as a field Firecracker would silently ignore counts as missing).
func TestRequestsValidateAgainstSpecs(t *testing.T) {
	t.Parallel()
	api := newFakeAPI(t, nil)
	for _, s := range specFiles(t) {
		doc := preparedSpec(t, s, specgate.FirecrackerOpen)
		strict := preparedSpec(t, s, specgate.FreeForm)
		t.Run(s.version.String(), func(t *testing.T) {
			for _, tc := range endpointCases {
				schema, ok := specgate.RequestSchema(doc, tc.op)
				strictSchema, _ := specgate.RequestSchema(strict, tc.op)
				if !ok || tc.name == "get_version" {
					continue
				}
				api.reset()
				c := New(api.sock, WithVersion(s.version))
				err := tc.call(t.Context(), c)
				c.Close()
				reqs := api.requests()
				var unsupported *UnsupportedError
				switch {
				case errors.As(err, &unsupported):
					if len(reqs) != 0 {
						t.Errorf("%s: refused by the gate but %d requests were sent", tc.name, len(reqs))
					}
					if isManual(unsupported) {
						continue
					}
					body := newestBody(t, tc)
					if validate(strictSchema, body) == nil {
						t.Errorf("%s: the gate refuses %s on v%s, but its spec accepts %s", tc.name, unsupported.Feature, s.version, body)
					}
					continue
				case err != nil:
					t.Errorf("%s: %v", tc.name, err)
					continue
				case len(reqs) != 1:
					t.Errorf("%s: server saw %d requests, want 1", tc.name, len(reqs))
					continue
				}
				r := reqs[0]
				if !opPattern(tc.op).MatchString(r.Path) || r.Method+" " != tc.op[:len(r.Method)+1] {
					t.Errorf("%s: sent %s %s for %s", tc.name, r.Method, r.Path, tc.op)
				}
				if schema == nil {
					if len(r.Body) != 0 {
						t.Errorf("%s: sent a body to an endpoint without one: %s", tc.name, r.Body)
					}
					continue
				}
				if err := validate(schema, r.Body); err != nil {
					t.Errorf("%s: body invalid for v%s: %v\nbody: %s", tc.name, s.version, err, r.Body)
				}
			}
		})
	}
}

// TestVMConfigValidatesAgainstSpecs checks a full config file against each spec's
// FullVmConfiguration, where CheckVMConfig lets it through.
func TestVMConfigValidatesAgainstSpecs(t *testing.T) {
	t.Parallel()
	for _, s := range specFiles(t) {
		schema, ok := specgate.RequestSchema(preparedSpec(t, s, specgate.FirecrackerOpen), configFileOp)
		if !ok {
			t.Fatalf("%s has no FullVmConfiguration", s.name)
		}
		strict, _ := specgate.RequestSchema(preparedSpec(t, s, specgate.FreeForm), configFileOp)
		for name, cfg := range map[string]VMConfig{"full": fullVMConfig(), "min": minVMConfig()} {
			err := CheckVMConfig(s.version, cfg)
			body, merr := json.Marshal(cfg)
			if merr != nil {
				t.Fatal(merr)
			}
			var unsupported *UnsupportedError
			switch {
			case errors.As(err, &unsupported):
				if !isManual(unsupported) && validate(strict, body) == nil {
					t.Errorf("v%s %s: CheckVMConfig refuses %s, but the spec accepts the file", s.version, name, unsupported.Feature)
				}
			case err != nil:
				t.Errorf("v%s %s: %v", s.version, name, err)
			default:
				if err := validate(schema, body); err != nil {
					t.Errorf("v%s %s: config invalid: %v\n%s", s.version, name, err, body)
				}
			}
		}
	}
}

// isManual reports whether the gate refused through manualFeatures, which the specs do not
// show.
func isManual(u *UnsupportedError) bool {
	for _, f := range manualFeatures {
		if f.describe() == u.Feature {
			return true
		}
	}
	return false
}

// newestBody returns the body a case sends to the newest release.
func newestBody(t *testing.T, tc endpointCase) []byte {
	t.Helper()
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	if err := tc.call(t.Context(), c); err != nil {
		t.Fatalf("%s on the newest release: %v", tc.name, err)
	}
	return api.requests()[0].Body
}

func validate(schema *openapi3.Schema, body []byte) error {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	return schema.VisitJSON(v, openapi3.MultiErrors())
}
