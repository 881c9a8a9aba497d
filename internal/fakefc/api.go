package fakefc

import (
	"encoding/json"
	"fmt"
	"strings"
)

// This file turns a request into a VMM call the way Firecracker's API server does
// (parsed_request.rs and request/*.rs): routing on the first path token, resource IDs,
// body decoding, deprecation notes. Phase checks happen when the call runs.

type phase int

const (
	phaseAny phase = iota
	phasePre
	phasePost
)

// call is a parsed request, ready to run against the VM.
type call struct {
	name        string // for the timing log lines, like "pause vm"
	phase       phase
	metric      string // put/patch/get_api_requests group
	deprecation string
	run         func(v *vm, h *Handler) (any, *apiError)
}

// parseError is a request refused before it reaches the VMM; logged is how Firecracker logs
// it (the Debug form of its RequestError).
func parseError(logged, format string, args ...any) *apiError {
	return &apiError{status: 400, msg: fmt.Sprintf(format, args...), logged: logged}
}

func invalidPath(method, token string) *apiError {
	return parseError(fmt.Sprintf("InvalidPathMethod(%s, %s)", rustDebugString(token), titleMethod(method)),
		"Invalid request method and/or path: %s %s.", method, token)
}

func titleMethod(m string) string { return m[:1] + strings.ToLower(m[1:]) }

const serdePrefix = "An error occurred when deserializing the json body of a request: "

// bodyAs decodes body as the release's type for the spec operation, then into out.
func (h *Handler) bodyAs(method, specPath string, body []byte, out any) *apiError {
	t := h.rel.bodies[method+" "+specPath]
	if t == nil {
		return parseError("Generic(BadRequest, \"no body\")", "Invalid request method and/or path: %s %s.", method, specPath)
	}
	v, err := decode(body, t)
	if err != nil {
		return parseError(fmt.Sprintf("SerdeJson(Error(%s, line: %d, column: %d))", rustDebugString(err.msg), err.line, err.col),
			"%s%s.", serdePrefix, err.Error())
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *any:
		*o = v // keep integers exact
		return nil
	}
	b, merr := json.Marshal(v)
	if merr == nil {
		merr = json.Unmarshal(b, out)
	}
	if merr != nil {
		return parseError("SerdeJson", "%s%s.", serdePrefix, merr.Error())
	}
	return nil
}

// checkID applies the rules for a resource ID taken from the path.
func checkID(tokens []string) (string, *apiError) {
	if len(tokens) < 2 || tokens[1] == "" {
		return "", parseError("EmptyID", "The ID cannot be empty.")
	}
	id := tokens[1]
	for _, r := range id {
		if !(r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return "", parseError("InvalidID", "API Resource IDs can only contain alphanumeric characters and underscores.")
		}
	}
	return id, nil
}

func idMismatch(string, string) *apiError {
	return parseError(`Generic(BadRequest, "The id from the path does not match the id from the body!")`,
		"The id from the path does not match the id from the body!")
}

// netIDMismatch is the network interfaces' wording, which names both IDs.
func netIDMismatch(path, body string) *apiError {
	msg := fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", path, body)
	return parseError(fmt.Sprintf("Generic(BadRequest, %s)", rustDebugString(msg)), "%s", msg)
}

// deviceBody parses the body of a request on a device path (/drives/{id} and the like):
// the ID in the path, the body, and the ID the body must repeat.
func deviceBody[T any](h *Handler, method, specPath string, tokens []string, body []byte,
	bodyID func(T) string, mismatch func(path, body string) *apiError) (T, *apiError) {
	var out T
	id, err := checkID(tokens)
	if err != nil {
		return out, err
	}
	if err := h.bodyAs(method, specPath, body, &out); err != nil {
		return out, err
	}
	if got := bodyID(out); got != id {
		return out, mismatch(id, got)
	}
	return out, nil
}

func driveID(d driveConfig) string       { return d.DriveID }
func driveUpdateID(d driveUpdate) string { return d.DriveID }
func netID(n netConfig) string           { return n.IfaceID }
func netUpdateID(n netUpdate) string     { return n.IfaceID }
func pmemID(p pmemConfig) string         { return p.ID }
func pmemUpdateID(p pmemUpdate) string   { return p.ID }

// parse routes one request. body is nil when the request has none.
func (h *Handler) parse(method, uri string, body []byte) (*call, *apiError) {
	var tokens []string
	for _, t := range strings.Split(uri, "/") {
		if t != "" {
			tokens = append(tokens, t)
		}
	}
	t0, t1 := "", ""
	if len(tokens) > 0 {
		t0 = tokens[0]
	}
	if len(tokens) > 1 {
		t1 = tokens[1]
	}
	has := body != nil
	var c *call
	var err *apiError
	switch {
	case method == "GET" && !has:
		c, err = h.parseGet(t0, t1, tokens)
	case method == "PUT" && has:
		c, err = h.parsePut(t0, t1, tokens, body, uri)
	case method == "PATCH" && has:
		c, err = h.parsePatch(t0, t1, tokens, body)
	case method == "PATCH" && !has && t0 == "balloon" && t1 == "hinting" && len(tokens) > 2 &&
		(tokens[2] == "start" || tokens[2] == "stop") && h.rel.hasOp("PATCH", "/balloon/hinting/"+tokens[2]):
		// Both take an empty body: start's fields are all optional.
		c = &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.balloonHinting() }}
	case method == "DELETE" && !has:
		c, err = h.parseDelete(t0, tokens)
	}
	if c != nil || err != nil {
		return c, err
	}
	switch {
	case method == "GET" && has:
		return nil, parseError(`Generic(BadRequest, "GET request cannot have a body.")`, "GET request cannot have a body.")
	case method == "PUT" && !has:
		return nil, parseError(`Generic(BadRequest, "Empty PUT request.")`, "Empty PUT request.")
	case method == "PATCH" && !has:
		return nil, parseError(`Generic(BadRequest, "Empty PATCH request.")`, "Empty PATCH request.")
	case method == "DELETE" && has:
		return nil, parseError(`Generic(BadRequest, "DELETE request cannot have a body.")`, "DELETE request cannot have a body.")
	}
	return nil, invalidPath(method, t0)
}

func (h *Handler) parseGet(t0, t1 string, tokens []string) (*call, *apiError) {
	switch {
	case t0 == "":
		return &call{metric: "instance_info", run: func(v *vm, _ *Handler) (any, *apiError) { return v.instanceInfo(), nil }}, nil
	case t0 == "version":
		return &call{metric: "vmm_version", run: func(v *vm, _ *Handler) (any, *apiError) { return v.versionInfo(), nil }}, nil
	case t0 == "machine-config":
		return &call{metric: "machine_cfg", run: func(v *vm, _ *Handler) (any, *apiError) { return v.machineOut(), nil }}, nil
	case t0 == "mmds":
		return &call{metric: "mmds", run: func(v *vm, _ *Handler) (any, *apiError) { return v.getMmds() }}, nil
	case t0 == "vm" && t1 == "config":
		return &call{run: func(v *vm, _ *Handler) (any, *apiError) {
			if !v.booted {
				v.log.warn(threadMain, "If the VM was restored from snapshot, boot-source, machine-config.smt, and machine-config.cpu_template will all be empty.")
			}
			return v.vmConfig(), nil
		}}, nil
	case t0 == "balloon":
		switch {
		case t1 == "":
			return &call{run: func(v *vm, _ *Handler) (any, *apiError) { return v.getBalloon() }}, nil
		case t1 == "statistics":
			return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.balloonStats() }}, nil
		case t1 == "hinting" && len(tokens) > 2 && tokens[2] == "status" && h.rel.hasOp("GET", "/balloon/hinting/status"):
			return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.balloonHintingStatus() }}, nil
		}
		return nil, parseError(fmt.Sprintf("InvalidPathMethod(%s, Get)", rustDebugString(t1)), "Unrecognized GET request path `%s`.", t1)
	case t0 == "hotplug" && t1 == "memory" && h.rel.hasOp("GET", "/hotplug/memory"):
		return &call{phase: phasePost, metric: "hotplug_memory", run: func(v *vm, _ *Handler) (any, *apiError) { return v.getHotplug() }}, nil
	}
	return nil, nil
}

// putBody decodes a PUT body for a spec path into a value of type T.
func putBody[T any](h *Handler, method, specPath string, body []byte) (T, *apiError) {
	var out T
	err := h.bodyAs(method, specPath, body, &out)
	return out, err
}

// bind makes a call that runs the VM operation f with arg.
func bind[T any](ph phase, metric string, f func(*vm, T) (any, *apiError), arg T) *call {
	return &call{phase: ph, metric: metric, run: func(v *vm, _ *Handler) (any, *apiError) { return f(v, arg) }}
}

// bodyCall decodes body as T and binds it to f.
func bodyCall[T any](h *Handler, method, specPath string, body []byte, ph phase, metric string,
	f func(*vm, T) (any, *apiError)) (*call, T, *apiError) {
	arg, err := putBody[T](h, method, specPath, body)
	if err != nil {
		return nil, arg, err
	}
	return bind(ph, metric, f, arg), arg, nil
}

// deprecate notes a deprecated field on a call that parsed.
func deprecate(c *call, err *apiError, used bool, msg string) (*call, *apiError) {
	if err == nil && used {
		c.deprecation = msg
	}
	return c, err
}

func (h *Handler) parsePut(t0, t1 string, tokens []string, body []byte, uri string) (*call, *apiError) {
	switch t0 {
	case "actions":
		a, err := putBody[actionBody](h, "PUT", "/actions", body)
		if err != nil {
			return nil, err
		}
		switch a.ActionType {
		case "InstanceStart":
			return &call{phase: phasePre, metric: "actions", run: func(v *vm, _ *Handler) (any, *apiError) { return v.instanceStart() }}, nil
		case "SendCtrlAltDel":
			return &call{phase: phasePost, metric: "actions", run: func(v *vm, _ *Handler) (any, *apiError) { return v.sendCtrlAltDel() }}, nil
		}
		return &call{phase: phasePost, metric: "actions", run: func(v *vm, _ *Handler) (any, *apiError) { return v.flushMetrics() }}, nil
	case "boot-source":
		c, _, err := bodyCall(h, "PUT", "/boot-source", body, phasePre, "boot_source", (*vm).putBootSource)
		return c, err
	case "machine-config":
		c, m, err := bodyCall(h, "PUT", "/machine-config", body, phasePre, "machine_cfg", (*vm).putMachine)
		return deprecate(c, err, m.CPUTemplate != nil, "PUT /machine-config: cpu_template field is deprecated.")
	case "cpu-config":
		if err := h.bodyAs("PUT", "/cpu-config", body, nil); err != nil {
			return nil, err
		}
		return &call{phase: phasePre, metric: "cpu_cfg", run: func(v *vm, _ *Handler) (any, *apiError) { return v.putCPUConfig() }}, nil
	case "drives":
		d, err := deviceBody(h, "PUT", "/drives/{drive_id}", tokens, body, driveID, idMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePre, "drive", (*vm).putDrive, d), nil
	case "network-interfaces":
		n, err := deviceBody(h, "PUT", "/network-interfaces/{iface_id}", tokens, body, netID, netIDMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePre, "network", (*vm).putNet, n), nil
	case "pmem":
		if !h.rel.hasOp("PUT", "/pmem/{id}") {
			return nil, nil
		}
		p, err := deviceBody(h, "PUT", "/pmem/{id}", tokens, body, pmemID, idMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePre, "pmem", (*vm).putPmem, p), nil
	case "vsock":
		c, vs, err := bodyCall(h, "PUT", "/vsock", body, phasePre, "vsock", (*vm).putVsock)
		return deprecate(c, err, vs.VsockID != nil, "PUT /vsock: vsock_id field is deprecated.")
	case "balloon":
		c, _, err := bodyCall(h, "PUT", "/balloon", body, phasePre, "", (*vm).putBalloon)
		return c, err
	case "entropy":
		c, _, err := bodyCall(h, "PUT", "/entropy", body, phasePre, "", (*vm).putEntropy)
		return c, err
	case "serial":
		if !h.rel.hasOp("PUT", "/serial") {
			return nil, nil
		}
		c, _, err := bodyCall(h, "PUT", "/serial", body, phasePre, "serial", (*vm).putSerial)
		return c, err
	case "logger":
		l, err := putBody[loggerConfig](h, "PUT", "/logger", body)
		if err != nil {
			return nil, err
		}
		return &call{phase: phasePre, metric: "logger", run: func(v *vm, h *Handler) (any, *apiError) { return v.putLogger(l, h.log) }}, nil
	case "metrics":
		c, _, err := bodyCall(h, "PUT", "/metrics", body, phasePre, "metrics", (*vm).putMetrics)
		return c, err
	case "mmds":
		switch t1 {
		case "":
			c, _, err := bodyCall(h, "PUT", "/mmds", body, phaseAny, "mmds", (*vm).putMmds)
			return c, err
		case "config":
			c, m, err := bodyCall(h, "PUT", "/mmds/config", body, phasePre, "mmds", (*vm).putMmdsConfig)
			return deprecate(c, err, m.Version == nil || *m.Version == "V1", "PUT /mmds/config: V1 is deprecated. Use V2 instead.")
		}
		return nil, parseError(fmt.Sprintf("InvalidPathMethod(%s, Put)", rustDebugString(t1)), "Unrecognized PUT request path `%s`.", t1)
	case "hotplug":
		if t1 != "memory" || !h.rel.hasOp("PUT", "/hotplug/memory") {
			return nil, nil
		}
		c, _, err := bodyCall(h, "PUT", "/hotplug/memory", body, phasePre, "hotplug_memory", (*vm).putHotplug)
		return c, err
	case "snapshot":
		return h.parseSnapshot(t1, body, uri)
	}
	return nil, nil
}

func (h *Handler) parseSnapshot(t1 string, body []byte, uri string) (*call, *apiError) {
	switch t1 {
	case "":
		return nil, parseError(`Generic(BadRequest, "Missing snapshot operation type.")`, "Missing snapshot operation type.")
	case "create":
		c, err := putBody[snapshotCreate](h, "PUT", "/snapshot/create", body)
		if err != nil {
			return nil, err
		}
		kind := "full"
		if c.SnapshotType != nil && *c.SnapshotType == "Diff" {
			kind = "diff"
		}
		return &call{name: "create " + kind + " snapshot", phase: phasePost,
			run: func(v *vm, _ *Handler) (any, *apiError) { return v.createSnapshot(c) }}, nil
	case "load":
		c, err := putBody[snapshotLoad](h, "PUT", "/snapshot/load", body)
		if err != nil {
			return nil, err
		}
		switch {
		case c.MemFilePath == nil && c.MemBackend == nil:
			return nil, parseError("SerdeJson", "%smissing field: either `mem_backend` or `mem_file_path` is required.", serdePrefix)
		case c.MemFilePath != nil && c.MemBackend != nil:
			return nil, parseError("SerdeJson", "%stoo many fields: either `mem_backend` or `mem_file_path` exclusively is required.", serdePrefix)
		}
		out := &call{name: "load snapshot", phase: phasePre, run: func(v *vm, _ *Handler) (any, *apiError) { return v.loadSnapshot(c) }}
		switch {
		case h.rel.atLeast(13) && (c.MemFilePath != nil || c.EnableDiffSnapshots != nil):
			out.deprecation = "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated."
		case !h.rel.atLeast(13) && c.MemFilePath != nil:
			out.deprecation = "PUT /snapshot/load: mem_file_path field is deprecated."
		}
		return out, nil
	}
	return nil, parseError(fmt.Sprintf("InvalidPathMethod(%s, Put)", rustDebugString(uri)), "Invalid request method and/or path: PUT %s.", uri)
}

func (h *Handler) parsePatch(t0, t1 string, tokens []string, body []byte) (*call, *apiError) {
	switch t0 {
	case "machine-config":
		u, err := putBody[machineConfigUpdate](h, "PATCH", "/machine-config", body)
		if err != nil {
			return nil, err
		}
		if u.empty() {
			return nil, parseError(`Generic(BadRequest, "Empty PATCH request.")`, "Empty PATCH request.")
		}
		return deprecate(bind(phasePre, "machine_cfg", (*vm).patchMachine, u), nil, u.CPUTemplate != nil,
			"PATCH /machine-config: cpu_template field is deprecated.")
	case "drives":
		u, err := deviceBody(h, "PATCH", "/drives/{drive_id}", tokens, body, driveUpdateID, idMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePost, "drive", (*vm).patchDrive, u), nil
	case "network-interfaces":
		u, err := deviceBody(h, "PATCH", "/network-interfaces/{iface_id}", tokens, body, netUpdateID, netIDMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePost, "network", (*vm).patchNet, u), nil
	case "pmem":
		if !h.rel.hasOp("PATCH", "/pmem/{id}") {
			return nil, nil
		}
		u, err := deviceBody(h, "PATCH", "/pmem/{id}", tokens, body, pmemUpdateID, idMismatch)
		if err != nil {
			return nil, err
		}
		return bind(phasePost, "", (*vm).patchPmem, u), nil
	case "mmds":
		c, _, err := bodyCall(h, "PATCH", "/mmds", body, phaseAny, "mmds", (*vm).patchMmds)
		return c, err
	case "vm":
		c, b, err := bodyCall(h, "PATCH", "/vm", body, phasePost, "", (*vm).patchVM)
		if err == nil {
			c.name = "resume vm"
			if b.State == "Paused" {
				c.name = "pause vm"
			}
		}
		return c, err
	case "hotplug":
		if t1 != "memory" || !h.rel.hasOp("PATCH", "/hotplug/memory") {
			return nil, nil
		}
		c, _, err := bodyCall(h, "PATCH", "/hotplug/memory", body, phasePost, "hotplug_memory", (*vm).patchHotplug)
		return c, err
	case "balloon":
		return h.parsePatchBalloon(t1, tokens, body)
	}
	return nil, nil
}

func (h *Handler) parsePatchBalloon(t1 string, tokens []string, body []byte) (*call, *apiError) {
	switch {
	case t1 == "statistics":
		u, err := putBody[balloonStatsUpdate](h, "PATCH", "/balloon/statistics", body)
		if err != nil {
			return nil, err
		}
		return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.patchBalloonStats(u) }}, nil
	case t1 == "hinting" && h.rel.hasOp("PATCH", "/balloon/hinting/start"):
		t2 := ""
		if len(tokens) > 2 {
			t2 = tokens[2]
		}
		switch t2 {
		case "start":
			if err := h.bodyAs("PATCH", "/balloon/hinting/start", body, &hintingStart{}); err != nil {
				return nil, err
			}
			return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.balloonHinting() }}, nil
		case "stop":
			return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.balloonHinting() }}, nil
		}
		return nil, parseError(fmt.Sprintf("InvalidPathMethod(%s, Patch)", rustDebugString(t2)), "Unrecognized PATCH request path `%s`.", t2)
	case t1 == "" || h.rel.atLeast(14):
		u, err := putBody[balloonUpdate](h, "PATCH", "/balloon", body)
		if err != nil {
			return nil, err
		}
		return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) { return v.patchBalloon(u) }}, nil
	}
	return nil, parseError(fmt.Sprintf("InvalidPathMethod(%s, Patch)", rustDebugString(t1)), "Unrecognized PATCH request path `%s`.", t1)
}

// parseDelete handles hot-unplug (v1.16+), which needs PCI; the fake supports no hot-plug,
// so every device is refused as Firecracker refuses it without --enable-pci.
func (h *Handler) parseDelete(t0 string, tokens []string) (*call, *apiError) {
	spec := map[string]string{"drives": "/drives/{drive_id}", "network-interfaces": "/network-interfaces/{iface_id}", "pmem": "/pmem/{id}"}[t0]
	if spec == "" || !h.rel.hasOp("DELETE", spec) {
		return nil, nil
	}
	if _, err := checkID(tokens); err != nil {
		return nil, err
	}
	return &call{phase: phasePost, run: func(v *vm, _ *Handler) (any, *apiError) {
		if !v.enablePCI {
			return nil, fault("PCI is not enabled")
		}
		return nil, fault("Device not found")
	}}, nil
}
