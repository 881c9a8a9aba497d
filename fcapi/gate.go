package fcapi

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The version gate refuses, before anything is sent, a request that uses an endpoint, a field
// or an enum value that the running Firecracker does not have. Its table comes from
// Firecracker's own API specs (features_gen.go) plus the few facts the specs cannot tell
// (manualFeatures).

// feature is one entry of the gate's table: an endpoint, a field of its request body or one
// value of such a field, and the first release that has it.
type feature struct {
	// op is the endpoint as the spec names it ("PUT /drives/{drive_id}"), or configFileOp for
	// the --config-file body.
	op string
	// field is a dotted path into the body ("rx_rate_limiter.bandwidth"); arrays are
	// transparent. Empty for the endpoint itself.
	field string
	// value is one value of a string enum field; empty for the field itself.
	value string
	since Version
}

// configFileOp names the --config-file body (the schema of GET /vm/config) in the table.
const configFileOp = "config"

// manualFeatures are facts the specs cannot give; each says where it comes from.
var manualFeatures = []feature{
	// PCI hot-unplug (v1.16.0 CHANGELOG); these endpoints are absent from every spec.
	{op: "DELETE /drives/{drive_id}", since: Version{Major: 1, Minor: 16}},
	{op: "DELETE /network-interfaces/{iface_id}", since: Version{Major: 1, Minor: 16}},
	{op: "DELETE /pmem/{id}", since: Version{Major: 1, Minor: 16}},
	// An inline CPU template in --config-file arrived in v1.13.0 (CHANGELOG); before that the
	// key took a file path, although the specs list cpu-config in GET /vm/config from v1.10.
	{op: configFileOp, field: "cpu-config", since: Version{Major: 1, Minor: 13}},
}

// specOmissions are features that the specs date too late: the specs of older releases leave
// them out, but those releases accept them (checked against the real v1.7.0).
var specOmissions = []feature{
	// The v1.7.0 to v1.10.1 specs lack kvm_capabilities in CpuConfig.
	{op: "PUT /cpu-config", field: "kvm_capabilities"},
	{op: configFileOp, field: "cpu-config.kvm_capabilities"},
	// The v1.7.0 spec's FullVmConfiguration lacks entropy; a config file may hold it.
	{op: configFileOp, field: "entropy"},
}

// specTable is the gate's table: the spec-derived features less the omissions, merged with
// the manual ones.
var specTable = newFeatureTable(slices.Concat(withoutOmissions(specFeatures), manualFeatures))

// withoutOmissions drops the features of specOmissions from fs.
func withoutOmissions(fs []feature) []feature {
	return slices.DeleteFunc(slices.Clone(fs), func(f feature) bool {
		return slices.ContainsFunc(specOmissions, func(o feature) bool {
			return o.op == f.op && o.field == f.field && o.value == f.value
		})
	})
}

// featureTable indexes features by endpoint.
type featureTable struct {
	ops map[string]*opFeatures
}

type opFeatures struct {
	since  Version // zero: every supported release has the endpoint
	fields map[string]*fieldFeature
	newest Version // the newest since of the endpoint and all its fields and values
}

type fieldFeature struct {
	since  Version // zero: the field is as old as its endpoint
	values map[string]Version
}

func newFeatureTable(fs []feature) *featureTable {
	t := &featureTable{ops: map[string]*opFeatures{}}
	for _, f := range fs {
		o := t.ops[f.op]
		if o == nil {
			o = &opFeatures{fields: map[string]*fieldFeature{}}
			t.ops[f.op] = o
		}
		o.newest = maxVersion(o.newest, f.since)
		if f.field == "" {
			o.since = maxVersion(o.since, f.since)
			continue
		}
		ff := o.fields[f.field]
		if ff == nil {
			ff = &fieldFeature{values: map[string]Version{}}
			o.fields[f.field] = ff
		}
		if f.value == "" {
			ff.since = maxVersion(ff.since, f.since)
		} else {
			ff.values[f.value] = maxVersion(ff.values[f.value], f.since)
		}
	}
	return t
}

func maxVersion(a, b Version) Version {
	if a.Compare(b) >= 0 {
		return a
	}
	return b
}

// since returns the first release with the endpoint op, or with its field when field is set;
// zero when every supported release has it.
func (t *featureTable) since(op, field string) Version {
	o := t.ops[op]
	switch {
	case o == nil:
		return Version{}
	case field == "":
		return o.since
	case o.fields[field] == nil:
		return Version{}
	}
	return o.fields[field].since
}

// used lists the gated features that a request to op with this body uses: the endpoint
// itself, and each field present in the body (optional fields are omitted when unset) and
// each enum value it holds. The list is sorted, endpoint first.
func (t *featureTable) used(op string, body []byte) ([]feature, error) {
	o := t.ops[op]
	if o == nil {
		return nil, nil
	}
	var out []feature
	if !o.since.IsZero() {
		out = append(out, feature{op: op, since: o.since})
	}
	if len(o.fields) == 0 || len(body) == 0 {
		return out, nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, err
	}
	o.walk(op, "", v, &out)
	slices.SortFunc(out, func(a, b feature) int { // the endpoint's empty field sorts first
		return cmp.Or(strings.Compare(a.field, b.field), strings.Compare(a.value, b.value))
	})
	return out, nil
}

func (o *opFeatures) walk(op, prefix string, v any, out *[]feature) {
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			if f := o.fields[p]; f != nil {
				if !f.since.IsZero() {
					*out = append(*out, feature{op: op, field: p, since: f.since})
				}
				if s, ok := child.(string); ok && !f.values[s].IsZero() {
					*out = append(*out, feature{op: op, field: p, value: s, since: f.values[s]})
				}
			}
			o.walk(op, p, child, out)
		}
	case []any:
		for _, e := range x {
			o.walk(op, prefix, e, out)
		}
	}
}

// check returns an *UnsupportedError for the first feature that running lacks.
func check(running Version, used []feature) error {
	for _, f := range used {
		if !running.AtLeast(f.since) {
			return &UnsupportedError{Feature: f.describe(), Since: f.since, Running: running}
		}
	}
	return nil
}

func (f feature) describe() string {
	s := f.op
	if f.op == configFileOp {
		s = "the config file"
	}
	if f.field != "" {
		kind := "field"
		if f.op == configFileOp && !strings.Contains(f.field, ".") {
			kind = "key"
		}
		s += fmt.Sprintf(" %s %q", kind, f.field)
	}
	if f.value != "" {
		s += fmt.Sprintf(" value %q", f.value)
	}
	return s
}

// gate refuses a request that uses something the running Firecracker lacks. It asks GET
// /version (once per client) only when the request uses a gated feature.
func (c *Client) gate(ctx context.Context, op string, body []byte) error {
	o := c.features.ops[op]
	if o == nil {
		return nil
	}
	if v := c.cachedVersion(); !v.IsZero() && v.AtLeast(o.newest) {
		return nil
	}
	used, err := c.features.used(op, body)
	if err != nil {
		return fmt.Errorf("firecracker %s: version gate: %w", op, err)
	}
	if len(used) == 0 {
		return nil
	}
	v, err := c.Version(ctx)
	if err != nil {
		return fmt.Errorf("firecracker %s: read the version for the version gate: %w", op, err)
	}
	return check(v, used)
}

// CheckVMConfig checks a --config-file body against the Firecracker release v, as the client
// checks its requests: it returns an *UnsupportedError (matching errors.ErrUnsupported) naming
// the first key, field or value that v does not have.
func CheckVMConfig(v Version, cfg VMConfig) error {
	body, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("check config file: encode: %w", err)
	}
	used, err := specTable.used(configFileOp, body)
	if err != nil {
		return fmt.Errorf("check config file: %w", err)
	}
	return check(v, used)
}

// flagFeatures are the firecracker command-line flags newer than the oldest supported
// release, with the first release that has them (CHANGELOG; an older firecracker exits with
// "UnexpectedArgument"). The API specs do not describe flags.
var flagFeatures = map[string]Version{
	"--enable-pci": {Major: 1, Minor: 13},
}

// CheckFlags checks a firecracker command line against the release v before it runs: it
// returns an *UnsupportedError (matching errors.ErrUnsupported) naming the first flag that v
// does not have. A flag may be given as "--flag" or "--flag=value".
func CheckFlags(v Version, args []string) error {
	for _, a := range args {
		flag, _, _ := strings.Cut(a, "=")
		if since, ok := flagFeatures[flag]; ok && !v.AtLeast(since) {
			return &UnsupportedError{Feature: "the flag " + flag, Since: since, Running: v}
		}
	}
	return nil
}
