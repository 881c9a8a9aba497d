package fakefc

import (
	"os"
	"sync"
	"time"
)

// metrics emulates Firecracker's metrics: JSON lines written on FlushMetrics (and every 60
// seconds by Firecracker itself), each beginning with utc_timestamp_ms. Counters are deltas
// since the previous line; the fake counts the API requests it serves, deprecated calls and
// serial output, and reports the other groups as zeros.
type metrics struct {
	mu       sync.Mutex
	file     *os.File
	put      map[string]uint64 // "drive_count", "drive_fails", ...
	patch    map[string]uint64
	get      map[string]uint64
	deprec   uint64
	uartW    uint64
	pauseUS  int64
	resumeUS int64
}

func newMetrics() *metrics {
	return &metrics{put: map[string]uint64{}, patch: map[string]uint64{}, get: map[string]uint64{}}
}

func (m *metrics) configured() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.file != nil
}

func (m *metrics) open(path string, create bool) error {
	f, err := openTarget(path, create)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.file = f
	m.mu.Unlock()
	return nil
}

func (m *metrics) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.file != nil {
		_ = m.file.Close()
		m.file = nil
	}
}

func (m *metrics) uartBytes(n int) {
	m.mu.Lock()
	m.uartW += uint64(n)
	m.mu.Unlock()
}

// count records one API request in the put/patch/get groups: group is the metric prefix
// ("drive", "boot_source", ...), failed whether it was refused.
func (m *metrics) count(method, group string, failed bool) {
	if group == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var g map[string]uint64
	switch method {
	case "PUT":
		g = m.put
	case "PATCH":
		g = m.patch
	case "GET":
		g = m.get
	default:
		return
	}
	g[group+"_count"]++
	if failed && method != "GET" {
		g[group+"_fails"]++
	}
}

func (m *metrics) deprecated() {
	m.mu.Lock()
	m.deprec++
	m.mu.Unlock()
}

// group builds a counter group in Firecracker's key order from the names given.
func group(src map[string]uint64, names ...string) jobj {
	o := make(jobj, 0, len(names))
	for _, n := range names {
		o = append(o, jkv{n, src[n]})
	}
	return o
}

func pairs(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, n+"_count", n+"_fails")
	}
	return out
}

// flush writes one line when metrics are configured, and resets the counters.
func (m *metrics) flush(v *vm) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.file == nil {
		return
	}
	zero := map[string]uint64{}
	putNames := pairs("actions", "boot_source", "drive", "logger", "machine_cfg", "cpu_cfg", "metrics", "network", "mmds", "vsock")
	patchNames := pairs("drive", "network", "machine_cfg", "mmds")
	getNames := []string{"instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count"}
	if v.rel.atLeast(14) {
		putNames = append(putNames, pairs("pmem", "serial", "hotplug_memory")...)
		patchNames = append(patchNames, pairs("hotplug_memory")...)
		getNames = append(getNames, "hotplug_memory_count")
	}
	line := jobj{
		{"utc_timestamp_ms", time.Now().UnixMilli()},
		{"api_server", jobj{{"process_startup_time_us", 0}, {"process_startup_time_cpu_us", 0}}},
		{"deprecated_api", jobj{{"deprecated_http_api_calls", m.deprec}}},
		{"get_api_requests", group(m.get, getNames...)},
		{"i8042", group(zero, "error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count")},
		{"uart", jobj{{"error_count", 0}, {"flush_count", 0}, {"missed_read_count", 0}, {"missed_write_count", 0}, {"read_count", 0}, {"write_count", m.uartW}}},
		{"latencies_us", jobj{{"full_create_snapshot", 0}, {"diff_create_snapshot", 0}, {"load_snapshot", 0},
			{"pause_vm", m.pauseUS}, {"resume_vm", m.resumeUS}, {"vmm_full_create_snapshot", 0}, {"vmm_diff_create_snapshot", 0},
			{"vmm_load_snapshot", 0}, {"vmm_pause_vm", 0}, {"vmm_resume_vm", 0}}},
		{"logger", group(zero, "missed_metrics_count", "metrics_fails", "missed_log_count")},
		{"patch_api_requests", group(m.patch, patchNames...)},
		{"put_api_requests", group(m.put, putNames...)},
		{"seccomp", jobj{{"num_faults", 0}}},
		{"vmm", jobj{{"panic_count", 0}}},
		{"signals", group(zero, "sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill")},
	}
	b, err := marshal(line)
	if err == nil {
		_, _ = m.file.Write(append(b, '\n'))
	}
	m.put, m.patch, m.get = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	m.deprec, m.uartW, m.pauseUS, m.resumeUS = 0, 0, 0, 0
}
