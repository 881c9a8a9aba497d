package fakefc

import (
	"encoding/json"
	"os"
	"strings"
)

// configFileType is the release's VmmConfig: the --config-file schema (and GET /vm/config's).
// Unknown top-level keys are ignored; "boot-source" and "drives" are required.
func (h *Handler) configFileType() *rtype {
	b := func(key string) *rtype { return h.rel.bodies[key] }
	fields := []rfield{
		def("balloon", opt(b("PUT /balloon"))),
		req("drives", seq(b("PUT /drives/{drive_id}"))),
		req("boot-source", b("PUT /boot-source")),
		def("cpu-config", h.cpuConfigType()),
		def("logger", opt(b("PUT /logger"))),
		def("machine-config", opt(b("PUT /machine-config"))),
		def("metrics", opt(b("PUT /metrics"))),
		def("mmds-config", opt(b("PUT /mmds/config"))),
		def("network-interfaces", seq(b("PUT /network-interfaces/{iface_id}"))),
		def("vsock", opt(b("PUT /vsock"))),
		def("entropy", opt(b("PUT /entropy"))),
	}
	if h.rel.atLeast(14) {
		fields = append(fields, def("pmem", seq(b("PUT /pmem/{id}"))), def("memory-hotplug", opt(b("PUT /hotplug/memory"))))
	}
	return &rtype{kind: kindStruct, name: "VmmConfig", open: true, fields: fields}
}

// cpuConfigType is "cpu-config" in a config file: the path of a template, or from v1.13 also
// an inline template.
func (h *Handler) cpuConfigType() *rtype {
	tmpl := h.rel.bodies["PUT /cpu-config"]
	if !h.rel.atLeast(13) {
		return opt(tPath)
	}
	return opt(&rtype{kind: kindUntagged, name: "CustomCpuTemplateOrPath", alts: []*rtype{tmpl, tString}})
}

// configErrorPrefixes maps the API's error prefixes to the ones a config file reports.
var configErrorPrefixes = [][2]string{
	{"Balloon config error: ", "Balloon device error: "},
	{"Drive config error: ", "Block device error: "},
	{"MMMDS config error: ", "MMDS config error: "},
	{"Network config error: ", "Network device error: "},
	{"Machine config error: ", "VM config error: "},
	{"Vsock config error: ", "Vsock device error: "},
}

// bootFromConfig configures the VM from a --config-file and starts it, as Firecracker does
// at start-up. It returns Firecracker's error message, or "" once the VM runs.
func (h *Handler) bootFromConfig(data []byte) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vm
	const failed = "Configuration for VMM from one single json failed: "
	val, serr := decode(data, h.configFileType())
	if serr != nil {
		return failed + "Invalid JSON: " + serr.Error()
	}
	m, _ := val.(map[string]any)
	steps := []func() *apiError{
		func() *apiError {
			return one(m, "logger", func(c loggerConfig) (any, *apiError) { return v.putLogger(c, h.log) })
		},
		func() *apiError { return one(m, "metrics", v.putMetrics) },
		func() *apiError { return one(m, "machine-config", v.putMachine) },
		func() *apiError { return h.configCPU(m["cpu-config"]) },
		func() *apiError { return one(m, "boot-source", v.putBootSource) },
		func() *apiError { return each(m, "drives", v.putDrive) },
		func() *apiError { return each(m, "network-interfaces", v.putNet) },
		func() *apiError { return one(m, "vsock", v.putVsock) },
		func() *apiError { return one(m, "balloon", v.putBalloon) },
		func() *apiError { return one(m, "mmds-config", v.putMmdsConfig) },
		func() *apiError { return one(m, "entropy", v.putEntropy) },
		func() *apiError { return each(m, "pmem", v.putPmem) },
		func() *apiError { return one(m, "memory-hotplug", v.putHotplug) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			msg := err.msg
			for _, p := range configErrorPrefixes {
				if rest, ok := strings.CutPrefix(msg, p[0]); ok {
					msg = p[1] + rest
				}
			}
			return failed + msg
		}
	}
	if _, err := v.instanceStart(); err != nil {
		return "Could not Start MicroVM from one single json: " + strings.TrimPrefix(err.msg, "Start microvm error: ")
	}
	h.log.info(threadMain, "Successfully started microvm that was configured from one single json")
	hooks := v.afterResponse
	v.afterResponse = nil
	for _, hook := range hooks {
		hook()
	}
	return ""
}

// section decodes the value of key, already checked by decode; false when it is absent or
// null.
func section(m map[string]any, key string, out any) bool {
	raw, ok := m[key]
	if !ok || raw == nil {
		return false
	}
	b, err := json.Marshal(raw)
	return err == nil && json.Unmarshal(b, out) == nil
}

// one applies an optional section of the config file with f.
func one[T any](m map[string]any, key string, f func(T) (any, *apiError)) *apiError {
	var c T
	if !section(m, key, &c) {
		return nil
	}
	_, err := f(c)
	return err
}

// each applies every element of a list section with f.
func each[T any](m map[string]any, key string, f func(T) (any, *apiError)) *apiError {
	var cs []T
	section(m, key, &cs)
	for _, c := range cs {
		if _, err := f(c); err != nil {
			return err
		}
	}
	return nil
}

// configCPU applies "cpu-config": the path of a template or, from v1.13, an inline one.
func (h *Handler) configCPU(raw any) *apiError {
	if raw == nil {
		return nil
	}
	t := h.rel.bodies["PUT /cpu-config"]
	var data []byte
	if path, ok := raw.(string); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return fault("File operation error: %s", osError(err))
		}
		data = b
	} else {
		data, _ = json.Marshal(raw)
	}
	if _, err := decode(data, t); err != nil {
		return fault("Invalid JSON: %s", err.Error())
	}
	_, err := h.vm.putCPUConfig()
	return err
}
