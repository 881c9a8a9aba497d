package fakefc

import (
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"

	"github.com/smartvm/smartvm/internal/fcspec"
)

// This file describes the Rust types Firecracker deserializes request bodies into, and adapts
// them to one release with that release's spec: a field exists in a release when its spec has
// it; the Rust side says what the spec cannot (field order, integer widths, which fields have
// defaults, which structs accept unknown fields, custom parsers). The descriptions follow the
// x86_64 build, and were checked against real v1.7.0 and v1.14.2 binaries.

type kind int

const (
	kindStruct kind = iota
	kindString
	kindBool
	kindUint
	kindInt
	kindEnum
	kindSeq
	kindOption
	kindAny
	kindUntagged // an untagged enum: the first of alts that decodes the value
)

// rtype is one Rust type as serde sees it.
type rtype struct {
	kind     kind
	name     string // struct name ("BootSourceConfig") or integer type ("u8", "usize")
	expect   string // what serde says it expected, where that is not the default for kind
	fields   []rfield
	open     bool // a struct without deny_unknown_fields
	specFree bool // a struct the spec does not describe field by field
	variants []string
	elem     *rtype              // kindSeq, kindOption
	alts     []*rtype            // kindUntagged
	check    func(string) string // a string parser inside the visitor: the error sits at the string's end
	late     func(string) string // a parser after deserialization: the error sits at the struct's end
}

// rfield is one struct field. required: serde reports it missing (no Option, no default).
type rfield struct {
	name     string
	typ      *rtype
	required bool
	aliases  []string // other spellings of the field in some specs
}

func (t *rtype) field(name string) *rfield {
	for i := range t.fields {
		if t.fields[i].name == name {
			return &t.fields[i]
		}
	}
	return nil
}

func (t *rtype) fieldNames() []string {
	out := make([]string, len(t.fields))
	for i, f := range t.fields {
		out[i] = f.name
	}
	return out
}

func (t *rtype) hasVariant(v string) bool { return slices.Contains(t.variants, v) }

// expecting is what serde's "invalid type: ..., expected X" names.
func (t *rtype) expecting() string {
	if t.expect != "" {
		return t.expect
	}
	switch t.kind {
	case kindStruct:
		return "struct " + t.name
	case kindString:
		return "a string"
	case kindBool:
		return "a boolean"
	case kindUint, kindInt:
		return t.name
	case kindSeq:
		return "a sequence"
	case kindOption:
		return t.elem.expecting()
	}
	return "any valid JSON value"
}

func (t *rtype) max() uint64 {
	switch t.name {
	case "u8":
		return math.MaxUint8
	case "u16":
		return math.MaxUint16
	case "u32":
		return math.MaxUint32
	}
	return math.MaxUint64
}

var (
	tString  = &rtype{kind: kindString}
	tPath    = &rtype{kind: kindString, expect: "path string"}
	tBool    = &rtype{kind: kindBool}
	tU8      = &rtype{kind: kindUint, name: "u8"}
	tU16     = &rtype{kind: kindUint, name: "u16"}
	tU32     = &rtype{kind: kindUint, name: "u32"}
	tU64     = &rtype{kind: kindUint, name: "u64"}
	tUsize   = &rtype{kind: kindUint, name: "usize"}
	anyType  = &rtype{kind: kindAny}
	tIPv4    = &rtype{kind: kindString, expect: "IPv4 address", check: checkIPv4}
	tMAC     = &rtype{kind: kindString, late: checkMAC}
	tLevel   = &rtype{kind: kindString, late: checkLevel}
	tHexU32  = &rtype{kind: kindString, late: checkPrefixedNumber}
	tBitmap  = &rtype{kind: kindString, late: checkBitmap(64)}
	tBitmap3 = &rtype{kind: kindString, late: checkBitmap(32)}
	tKvmCap  = &rtype{kind: kindString, late: checkKvmCapability}
	tCPUIDRg = &rtype{kind: kindString, late: checkCPUIDRegister}
)

func opt(t *rtype) *rtype { return &rtype{kind: kindOption, elem: t} }
func seq(t *rtype) *rtype { return &rtype{kind: kindSeq, elem: t} }

func enum(variants ...string) *rtype { return &rtype{kind: kindEnum, variants: variants} }

func closed(name string, fields ...rfield) *rtype {
	return &rtype{kind: kindStruct, name: name, fields: fields}
}

func open(name string, fields ...rfield) *rtype {
	return &rtype{kind: kindStruct, name: name, fields: fields, open: true}
}

// req is a field serde requires; def one it defaults (Option or #[serde(default)]).
func req(name string, t *rtype) rfield { return rfield{name: name, typ: t, required: true} }
func def(name string, t *rtype) rfield { return rfield{name: name, typ: t} }

var (
	rtTokenBucket = open("TokenBucketConfig",
		req("size", tU64), def("one_time_burst", opt(tU64)), req("refill_time", tU64))
	rtRateLimiter = closed("RateLimiterConfig",
		def("bandwidth", opt(rtTokenBucket)), def("ops", opt(rtTokenBucket)))
	optRateLimiter = opt(rtRateLimiter)
)

// rustBodies maps each spec definition used as a request body to its Rust type.
var rustBodies = map[string]*rtype{
	"InstanceActionInfo": closed("ActionBody",
		req("action_type", enum("FlushMetrics", "InstanceStart", "SendCtrlAltDel"))),
	"Balloon": closed("BalloonDeviceConfig",
		req("amount_mib", tU32), req("deflate_on_oom", tBool), def("stats_polling_interval_s", tU16),
		def("free_page_hinting", tBool), def("free_page_reporting", tBool)),
	"BalloonUpdate":      closed("BalloonUpdateConfig", req("amount_mib", tU32)),
	"BalloonStatsUpdate": closed("BalloonUpdateStatsConfig", req("stats_polling_interval_s", tU16)),
	"BalloonStartCmd":    open("StartHintingCmd", def("acknowledge_on_stop", tBool)),
	"BootSource": closed("BootSourceConfig",
		req("kernel_image_path", tString), def("initrd_path", opt(tString)), def("boot_args", opt(tString))),
	"CpuConfig": {kind: kindStruct, name: "CustomCpuTemplate", specFree: true, fields: []rfield{
		def("kvm_capabilities", seq(tKvmCap)),
		def("cpuid_modifiers", seq(open("CpuidLeafModifier",
			req("leaf", tHexU32), req("subleaf", tHexU32), req("flags", tU32),
			req("modifiers", seq(open("CpuidRegisterModifier",
				req("register", tCPUIDRg), req("bitmap", tBitmap3))))))),
		def("msr_modifiers", seq(open("RegisterModifier", req("addr", tHexU32), req("bitmap", tBitmap)))),
	}},
	"Drive": closed("BlockDeviceConfig",
		req("drive_id", tString), def("partuuid", opt(tString)), req("is_root_device", tBool),
		def("cache_type", enum("Unsafe", "Writeback")), def("is_read_only", opt(tBool)),
		def("path_on_host", opt(tString)), def("rate_limiter", optRateLimiter),
		def("io_engine", opt(enum("Async", "Sync"))), def("socket", opt(tString))),
	"PartialDrive": closed("BlockDeviceUpdateConfig",
		req("drive_id", tString), def("path_on_host", opt(tString)), def("rate_limiter", optRateLimiter)),
	"Pmem": closed("PmemConfig",
		req("id", tString), req("path_on_host", tString), def("root_device", tBool), def("read_only", tBool),
		def("rate_limiter", optRateLimiter)),
	"PartialPmem": closed("PmemUpdateConfig", req("id", tString), def("rate_limiter", optRateLimiter)),
	"Logger": closed("LoggerConfig",
		def("log_path", opt(tPath)), def("level", opt(tLevel)), def("show_level", opt(tBool)),
		def("show_log_origin", opt(tBool)), def("module", opt(tString))),
	"MachineConfiguration": closed("MachineConfig",
		req("vcpu_count", tU8), req("mem_size_mib", tUsize), def("smt", tBool),
		def("cpu_template", opt(enum("C3", "T2", "T2S", "None", "T2CL", "T2A"))),
		def("track_dirty_pages", tBool), def("huge_pages", enum("None", "2M", "Transparent"))),
	"Metrics": open("MetricsConfig",
		req("metrics_path", tPath), def("emit_id", tBool), def("properties", opt(anyType))),
	"MmdsContentsObject": anyType,
	"MmdsConfig": closed("MmdsConfig",
		def("version", enum("V1", "V2")), req("network_interfaces", seq(tString)),
		def("ipv4_address", opt(tIPv4)),
		rfield{name: "imds_compat", typ: tBool, aliases: []string{"imds_comat"}}),
	"EntropyDevice": closed("EntropyDeviceConfig", def("rate_limiter", optRateLimiter)),
	"SerialDevice": closed("SerialConfig",
		def("serial_out_path", opt(tPath)), def("rate_limiter", opt(rtTokenBucket))),
	"MemoryHotplugConfig": closed("MemoryHotplugConfig",
		req("total_size_mib", tUsize), def("block_size_mib", tUsize), def("slot_size_mib", tUsize)),
	"MemoryHotplugSizeUpdate": closed("MemoryHotplugSizeUpdate", req("requested_size_mib", tUsize)),
	"NetworkInterface": closed("NetworkInterfaceConfig",
		req("iface_id", tString), req("host_dev_name", tString), def("guest_mac", opt(tMAC)),
		def("mtu", opt(tU16)), def("rx_rate_limiter", optRateLimiter), def("tx_rate_limiter", optRateLimiter)),
	"PartialNetworkInterface": closed("NetworkInterfaceUpdateConfig",
		req("iface_id", tString), def("rx_rate_limiter", optRateLimiter), def("tx_rate_limiter", optRateLimiter)),
	"SnapshotCreateParams": closed("CreateSnapshotParams",
		def("snapshot_type", enum("Diff", "Full")), req("snapshot_path", tPath), req("mem_file_path", tPath)),
	"SnapshotLoadParams": closed("LoadSnapshotConfig",
		req("snapshot_path", tPath), def("mem_file_path", opt(tPath)),
		def("mem_backend", opt(closed("MemBackendConfig", req("backend_path", tPath), req("backend_type", enum("File", "Uffd"))))),
		def("enable_diff_snapshots", tBool), def("track_dirty_pages", tBool), def("resume_vm", tBool),
		def("network_overrides", seq(open("NetworkOverride", req("iface_id", tString), req("host_dev_name", tString)))),
		def("vsock_override", opt(closed("VsockOverride", req("uds_path", tString)))),
		def("clock_realtime", tBool), def("huge_pages", enum("Snapshot", "None", "Transparent", "2M"))),
	"Vm": closed("Vm", req("state", enum("Paused", "Resumed"))),
	"Vsock": closed("VsockDeviceConfig",
		def("vsock_id", opt(tString)), req("guest_cid", tU32), req("uds_path", tString)),
}

// rustOps are bodies whose Rust type depends on the operation, not just the spec definition.
var rustOps = map[string]*rtype{
	"PATCH /machine-config": closed("MachineConfigUpdate",
		def("vcpu_count", opt(tU8)), def("mem_size_mib", opt(tUsize)), def("smt", opt(tBool)),
		def("cpu_template", opt(enum("C3", "T2", "T2S", "None", "T2CL", "T2A"))),
		def("track_dirty_pages", opt(tBool)), def("huge_pages", opt(enum("None", "2M", "Transparent")))),
}

// loadSpec reads and converts the embedded spec of a release.
func loadSpec(version string) (*openapi3.T, error) {
	raw, err := fcspec.Read(version)
	if err != nil {
		return nil, err
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(raw, &doc2); err != nil {
		return nil, fmt.Errorf("parse Firecracker %s spec: %w", version, err)
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert Firecracker %s spec: %w", version, err)
	}
	if err := openapi3.NewLoader().ResolveRefsIn(doc, nil); err != nil {
		return nil, fmt.Errorf("resolve Firecracker %s spec: %w", version, err)
	}
	return doc, nil
}

// bodyType returns the Rust type of an operation's request body in this release's spec, or
// nil when the operation takes no body. key is "METHOD /path".
func bodyType(key string, op *openapi3.Operation) *rtype {
	if op == nil || op.RequestBody == nil || op.RequestBody.Value == nil {
		return nil
	}
	mt := op.RequestBody.Value.Content.Get("application/json")
	if mt == nil {
		for _, m := range op.RequestBody.Value.Content {
			mt = m
		}
	}
	if mt == nil || mt.Schema == nil {
		return nil
	}
	name := refName(mt.Schema.Ref)
	if m, ok := rustOps[key]; ok {
		return adapt(m, mt.Schema.Value, name)
	}
	if m, ok := rustBodies[name]; ok {
		return adapt(m, mt.Schema.Value, name)
	}
	return fromSpec(mt.Schema, true)
}

func refName(ref string) string { return ref[strings.LastIndex(ref, "/")+1:] }

// adapt keeps the fields of the Rust type m that the spec schema s has, and adds those of s
// it lacks (with types read from the spec).
func adapt(m *rtype, s *openapi3.Schema, name string) *rtype {
	if s == nil {
		return m
	}
	switch m.kind {
	case kindOption:
		out := *m
		out.elem = adapt(m.elem, s, name)
		return &out
	case kindSeq:
		if s.Items != nil {
			out := *m
			out.elem = adapt(m.elem, s.Items.Value, refName(s.Items.Ref))
			return &out
		}
		return m
	case kindEnum:
		if len(s.Enum) == 0 {
			return m
		}
		out := *m
		out.variants = nil
		for _, v := range m.variants {
			if slices.Contains(s.Enum, any(v)) {
				out.variants = append(out.variants, v)
			}
		}
		return &out
	case kindStruct:
		if m.specFree || len(s.Properties) == 0 {
			return m
		}
	default:
		return m
	}
	out := *m
	out.fields = nil
	used := map[string]bool{}
	for _, f := range m.fields {
		for _, n := range append([]string{f.name}, f.aliases...) {
			if p, ok := s.Properties[n]; ok {
				used[n] = true
				f.typ = adapt(f.typ, p.Value, refName(p.Ref))
				out.fields = append(out.fields, f)
				break
			}
		}
	}
	var extra []string
	for n := range s.Properties {
		if !used[n] {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	for _, n := range extra {
		required := slices.Contains(s.Required, n)
		out.fields = append(out.fields, rfield{name: n, typ: fromSpec(s.Properties[n], required), required: required})
	}
	return &out
}

// fromSpec builds a type for a schema the Rust descriptions do not cover.
func fromSpec(ref *openapi3.SchemaRef, required bool) *rtype {
	s := ref.Value
	var t *rtype
	switch {
	case s == nil:
		t = anyType
	case len(s.Enum) > 0:
		t = &rtype{kind: kindEnum}
		for _, v := range s.Enum {
			t.variants = append(t.variants, fmt.Sprint(v))
		}
	case s.Type.Is("string"):
		t = tString
	case s.Type.Is("boolean"):
		t = tBool
	case s.Type.Is("integer"):
		t = tU64
	case s.Type.Is("array") && s.Items != nil:
		t = seq(fromSpec(s.Items, true))
	case s.Type.Is("object") && len(s.Properties) > 0:
		t = &rtype{kind: kindStruct, name: refName(ref.Ref)}
		names := make([]string, 0, len(s.Properties))
		for n := range s.Properties {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			r := slices.Contains(s.Required, n)
			t.fields = append(t.fields, rfield{name: n, typ: fromSpec(s.Properties[n], r), required: r})
		}
	default:
		t = anyType
	}
	if !required && t.kind != kindAny {
		return opt(t)
	}
	return t
}

// The custom parsers Firecracker applies to some string fields; each returns serde's message
// or "".

func checkIPv4(s string) string {
	if ip := net.ParseIP(s); ip == nil || ip.To4() == nil || strings.Contains(s, ":") {
		return "invalid IPv4 address syntax"
	}
	return ""
}

func checkMAC(s string) string {
	if _, err := parseMAC(s); err != nil {
		return "The provided MAC address is invalid."
	}
	return ""
}

// parseMAC accepts six colon-separated pairs of hex digits, as Firecracker's MacAddr does.
func parseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return mac, fmt.Errorf("invalid MAC address %q", s)
	}
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) != 2 {
			return mac, fmt.Errorf("invalid MAC address %q", s)
		}
		mac[i] = byte(v)
	}
	return mac, nil
}

// logLevels are the logger levels Firecracker accepts, case-insensitively, and what they mean.
var logLevels = map[string]string{
	"off": "Off", "trace": "Trace", "debug": "Debug", "info": "Info",
	"warn": "Warning", "warning": "Warning", "error": "Error",
}

func checkLevel(s string) string {
	if _, ok := logLevels[strings.ToLower(s)]; !ok {
		return "Invalid LevelFilter"
	}
	return ""
}

func checkPrefixedNumber(s string) string {
	var err error
	switch {
	case strings.HasPrefix(s, "0b"):
		_, err = strconv.ParseUint(s[2:], 2, 32)
	case strings.HasPrefix(s, "0x"):
		_, err = strconv.ParseUint(s[2:], 16, 32)
	default:
		return "No supported number system prefix found in value [" + s + "]. Make sure to prefix " +
			"the number with '0x' for hexadecimal numbers or '0b' for binary numbers."
	}
	if err != nil {
		kind := "InvalidDigit"
		switch {
		case s[2:] == "":
			kind = "Empty"
		case errors.Is(err, strconv.ErrRange):
			kind = "PosOverflow"
		}
		return "Failed to parse string [" + s + "] as a number for CPU template - ParseIntError { kind: " + kind + " }"
	}
	return ""
}

func checkBitmap(bits int) func(string) string {
	return func(s string) string {
		body := strings.TrimPrefix(s, "0b")
		n := 0
		for i := len(body) - 1; i >= 0; i-- {
			if n == bits {
				return "Failed to parse string [" + s + "] as a bitmap - string is too long"
			}
			switch c := body[i]; c {
			case '_':
				continue
			case 'x', '0', '1':
			default:
				return "Failed to parse string [" + s + "] as a bitmap - unknown character: " + strconv.Itoa(int(c))
			}
			n++
		}
		return ""
	}
}

func checkKvmCapability(s string) string {
	v := strings.TrimPrefix(s, "!")
	if _, err := strconv.ParseUint(v, 10, 32); err != nil {
		reason := "invalid digit found in string"
		switch {
		case v == "":
			reason = "cannot parse integer from empty string"
		case errors.Is(err, strconv.ErrRange):
			reason = "number too large to fit in target type"
		}
		return "Failed to parse string [" + s + "] as a kvm capability - can not convert to numeric: " + reason
	}
	return ""
}

func checkCPUIDRegister(s string) string {
	switch s {
	case "eax", "ebx", "ecx", "edx":
		return ""
	}
	return "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]"
}
