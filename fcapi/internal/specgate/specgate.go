// Package specgate reads Firecracker's API specs (Swagger 2.0) for fcapi's tests: it derives
// the version gate's table (which endpoint, request field and enum value each release added)
// and renders it as Go source, and it prepares the request schemas for validating bodies the
// way Firecracker parses them.
package specgate

import (
	"bytes"
	"cmp"
	"fmt"
	"go/format"
	"slices"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
)

// ConfigFileOp names the --config-file body (the FullVmConfiguration schema) in the table, as
// fcapi does.
const ConfigFileOp = "config"

// Load parses a Swagger 2.0 spec and converts it to OpenAPI 3 with every $ref resolved.
// Schemas reached through a $ref share one *openapi3.Schema.
func Load(data []byte) (*openapi3.T, error) {
	var d2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &d2); err != nil {
		return nil, fmt.Errorf("parse swagger 2.0 spec: %w", err)
	}
	d3, err := openapi2conv.ToV3(&d2)
	if err != nil {
		return nil, fmt.Errorf("convert spec to openapi 3: %w", err)
	}
	if err := openapi3.NewLoader().ResolveRefsIn(d3, nil); err != nil {
		return nil, fmt.Errorf("resolve spec references: %w", err)
	}
	return d3, nil
}

// RequestSchema returns the JSON request body schema of an operation ("PUT /drives/{drive_id}",
// or ConfigFileOp), whether the spec has the operation, and nil for an operation without body.
func RequestSchema(doc *openapi3.T, op string) (*openapi3.Schema, bool) {
	if op == ConfigFileOp {
		ref := doc.Components.Schemas["FullVmConfiguration"]
		if ref == nil {
			return nil, false
		}
		return ref.Value, true
	}
	method, path, _ := strings.Cut(op, " ")
	item := doc.Paths.Value(path)
	if item == nil {
		return nil, false
	}
	o := item.GetOperation(method)
	if o == nil {
		return nil, false
	}
	if o.RequestBody == nil || o.RequestBody.Value == nil {
		return nil, true
	}
	mt := o.RequestBody.Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		return nil, true
	}
	return mt.Schema.Value, true
}

// Ops lists the operations of a spec as "METHOD /path", sorted.
func Ops(doc *openapi3.T) []string {
	var ops []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			ops = append(ops, method+" "+path)
		}
	}
	slices.Sort(ops)
	return ops
}

// FirecrackerOpen are the definitions whose Firecracker structs accept unknown fields:
// MetricsConfig and TokenBucket (notes §1.6), the free-form MMDS store, and the config file's
// top level.
var FirecrackerOpen = []string{"Metrics", "TokenBucket", "MmdsContentsObject", "FullVmConfiguration"}

// FreeForm are the definitions that are open by nature: the MMDS store.
var FreeForm = []string{"MmdsContentsObject"}

// CloseObjects makes every definition with declared properties, except those named in open,
// reject unknown properties, as Firecracker's deny_unknown_fields does. It changes doc.
func CloseObjects(doc *openapi3.T, open []string) {
	no := false
	for name, ref := range doc.Components.Schemas {
		s := ref.Value
		if slices.Contains(open, name) || len(s.Properties) == 0 {
			continue
		}
		if s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			s.AdditionalProperties.Has = &no
		}
	}
}

// FixKnownDefects corrects, in doc, the spec errors that Firecracker's parser contradicts, so
// that bodies Firecracker accepts validate: before v1.14 the spec types CpuConfig as a string
// (v1.7, v1.10) and its modifier lists as objects, while Firecracker has always parsed a JSON
// object of arrays; there only the property names are kept. Before v1.12 CpuConfig lacks
// kvm_capabilities, and before v1.10 FullVmConfiguration lacks entropy, which v1.7.0 accepts.
func FixKnownDefects(doc *openapi3.T) {
	if ref := doc.Components.Schemas["FullVmConfiguration"]; ref != nil && ref.Value.Properties != nil && ref.Value.Properties["entropy"] == nil {
		if entropy := doc.Components.Schemas["EntropyDevice"]; entropy != nil {
			ref.Value.Properties["entropy"] = entropy
		}
	}
	ref := doc.Components.Schemas["CpuConfig"]
	if ref == nil {
		return
	}
	s := ref.Value
	if s.Properties["kvm_capabilities"] == nil && len(s.Properties) > 0 {
		s.Properties["kvm_capabilities"] = &openapi3.SchemaRef{Value: &openapi3.Schema{Type: &openapi3.Types{"array"}}}
	}
	arrays := true
	for _, p := range s.Properties {
		if !p.Value.Type.Is("array") {
			arrays = false
		}
	}
	if arrays && s.Type.Is("object") {
		return
	}
	s.Type = &openapi3.Types{"object"}
	for name := range s.Properties {
		s.Properties[name] = &openapi3.SchemaRef{Value: &openapi3.Schema{}}
	}
}

// Spec is one release's spec, for Derive.
type Spec struct {
	// Version is the release, such as "1.14.2" or "1.17.0-dev".
	Version string
	Doc     *openapi3.T
}

// Feature is one gated endpoint, field or enum value and the first release that has it.
type Feature struct {
	Op, Field, Value string
	Since            string
}

type key struct{ op, field, value string }

// Derive computes the gate's table from specs ordered oldest first. A feature's release is the
// first of the newest unbroken run of specs that have it. It is dated X.Y.0 when that spec is
// X.Y.Z and the spec before it is of an older minor release (minor releases add features,
// patches fix them), and with its exact version otherwise. Features of the oldest spec are
// left out (every supported release has them), and so is a field as old as its parent (its
// endpoint or enclosing field) and a value as old as its field. A field under an object that
// an older spec left untyped (no properties) counts as present in that spec.
func Derive(specs []Spec) ([]Feature, error) {
	if len(specs) == 0 {
		return nil, fmt.Errorf("derive version gate: no specs")
	}
	present := make([]map[key]bool, len(specs))
	opaque := make([]map[key]bool, len(specs))
	for i, s := range specs {
		present[i], opaque[i] = map[key]bool{}, map[key]bool{}
		for _, op := range append(Ops(s.Doc), ConfigFileOp) {
			schema, ok := RequestSchema(s.Doc, op)
			if !ok {
				continue
			}
			if op != ConfigFileOp {
				present[i][key{op: op}] = true
			}
			if schema != nil {
				flatten(op, "", schema, present[i], opaque[i], 0)
			}
		}
	}
	has := func(i int, k key) bool {
		if present[i][k] {
			return true
		}
		for f := k.field; f != ""; f = parent(f) {
			if opaque[i][key{op: k.op, field: f}] {
				return true
			}
		}
		return false
	}
	newest := len(specs) - 1
	first := map[key]int{}
	for k := range present[newest] {
		i := newest
		for i > 0 && has(i-1, k) {
			i--
		}
		first[k] = i
	}
	// eff is the index from which a key and all its parents exist.
	var eff func(k key) int
	eff = func(k key) int {
		switch {
		case k.value != "":
			return max(first[k], eff(key{op: k.op, field: k.field}))
		case k.field != "":
			return max(first[k], eff(key{op: k.op, field: parent(k.field)}))
		}
		return first[k]
	}
	var out []Feature
	for k, i := range first {
		var up int
		switch {
		case k.value != "":
			up = eff(key{op: k.op, field: k.field})
		case k.field != "":
			up = eff(key{op: k.op, field: parent(k.field)})
		}
		if i == 0 || i <= up {
			continue
		}
		since, err := dated(specs[i-1].Version, specs[i].Version)
		if err != nil {
			return nil, err
		}
		out = append(out, Feature{Op: k.op, Field: k.field, Value: k.value, Since: since})
	}
	slices.SortFunc(out, func(a, b Feature) int {
		return cmp.Or(strings.Compare(a.Op, b.Op), strings.Compare(a.Field, b.Field), strings.Compare(a.Value, b.Value))
	})
	return out, nil
}

// parent returns the dotted path without its last element.
func parent(field string) string {
	i := strings.LastIndexByte(field, '.')
	if i < 0 {
		return ""
	}
	return field[:i]
}

func flatten(op, prefix string, s *openapi3.Schema, present, opaque map[key]bool, depth int) {
	if depth > 16 {
		return
	}
	for _, name := range sortedKeys(s.Properties) {
		p := s.Properties[name].Value
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		present[key{op: op, field: path}] = true
		for _, e := range p.Enum {
			if v, ok := e.(string); ok {
				present[key{op: op, field: path, value: v}] = true
			}
		}
		switch {
		case p.Items != nil && p.Items.Value != nil:
			flatten(op, path, p.Items.Value, present, opaque, depth+1)
		case len(p.Properties) > 0:
			flatten(op, path, p, present, opaque, depth+1)
		case p.Type == nil || p.Type.Is("object"):
			if p.AdditionalProperties.Schema == nil {
				opaque[key{op: op, field: path}] = true
			}
		}
	}
}

func sortedKeys(m openapi3.Schemas) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// dated returns the release to record for a feature first seen in the spec of version, whose
// previous spec is of prev.
func dated(prev, version string) (string, error) {
	p, err := parse(prev)
	if err != nil {
		return "", err
	}
	v, err := parse(version)
	if err != nil {
		return "", err
	}
	if v.pre != "" || (p.major == v.major && p.minor == v.minor) {
		return version, nil
	}
	return fmt.Sprintf("%d.%d.0", v.major, v.minor), nil
}

type ver struct {
	major, minor, patch int
	pre                 string
}

func parse(s string) (ver, error) {
	core, pre, _ := strings.Cut(strings.TrimPrefix(s, "v"), "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return ver{}, fmt.Errorf("spec version %q: want MAJOR.MINOR.PATCH[-PRE]", s)
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil {
			return ver{}, fmt.Errorf("spec version %q: %w", s, err)
		}
		n[i] = x
	}
	return ver{n[0], n[1], n[2], pre}, nil
}

// Render writes the table as the Go source of package pkg, in a variable named varName of type
// []feature. header names how the file is regenerated.
func Render(pkg, varName, header string, fs []Feature) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by %s; DO NOT EDIT.\n\npackage %s\n\n", header, pkg)
	fmt.Fprintf(&b, "// %s lists each endpoint, request field and enum value that Firecracker's API specs show\n", varName)
	b.WriteString("// is newer than the oldest supported release, with the first release that has it.\n")
	fmt.Fprintf(&b, "var %s = []feature{\n", varName)
	for _, f := range fs {
		v, err := parse(f.Since)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "\t{op: %q", f.Op)
		if f.Field != "" {
			fmt.Fprintf(&b, ", field: %q", f.Field)
		}
		if f.Value != "" {
			fmt.Fprintf(&b, ", value: %q", f.Value)
		}
		fmt.Fprintf(&b, ", since: Version{Major: %d, Minor: %d", v.major, v.minor)
		if v.patch != 0 {
			fmt.Fprintf(&b, ", Patch: %d", v.patch)
		}
		if v.pre != "" {
			fmt.Fprintf(&b, ", Pre: %q", v.pre)
		}
		b.WriteString("}},\n")
	}
	b.WriteString("}\n")
	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("format generated table: %w", err)
	}
	return src, nil
}
