package fcapi

import (
	"context"
	"encoding/json"
	"net/http"
)

// LogLevel is Firecracker's log level (case-insensitive to Firecracker).
type LogLevel string

// Log levels; Firecracker's default is LogInfo.
const (
	LogError   LogLevel = "Error"
	LogWarning LogLevel = "Warning"
	LogInfo    LogLevel = "Info"
	LogDebug   LogLevel = "Debug"
	LogTrace   LogLevel = "Trace"
	LogOff     LogLevel = "Off"
)

// Logger is the body of PUT /logger.
type Logger struct {
	// LogPath is a file or FIFO (created if missing since v1.14); empty logs to stdout.
	LogPath       string   `json:"log_path,omitempty"`
	Level         LogLevel `json:"level,omitempty"`
	ShowLevel     bool     `json:"show_level,omitempty"`
	ShowLogOrigin bool     `json:"show_log_origin,omitempty"`
	// Module keeps only messages from module paths with this prefix, such as
	// "api_server::request".
	Module string `json:"module,omitempty"`
}

// PutLogger configures Firecracker's log; it may be repeated before boot. Pre-boot only. It is
// not kept in snapshots.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.send(ctx, http.MethodPut, "/logger", l)
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	// MetricsPath is required: a file or FIFO that receives JSON lines.
	MetricsPath string `json:"metrics_path"`
	// EmitID adds the instance ID to each line; newer than v1.16.1.
	EmitID bool `json:"emit_id,omitempty"`
	// Properties are added to each line; newer than v1.16.1.
	Properties map[string]string `json:"properties,omitempty"`
}

// PutMetrics configures the metrics output, once per process (and not at all after
// --metrics-path). Pre-boot only.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.send(ctx, http.MethodPut, "/metrics", m)
}

// MMDSVersion is the metadata service protocol.
type MMDSVersion string

// MMDS versions. MMDSv1 is Firecracker's default and deprecated (a config that ends up V1 is
// answered with "Deprecation: true"); MMDSv2 is session-based.
const (
	MMDSv1 MMDSVersion = "V1"
	MMDSv2 MMDSVersion = "V2"
)

// MMDSConfig is the body of PUT /mmds/config.
type MMDSConfig struct {
	Version MMDSVersion `json:"version,omitempty"`
	// NetworkInterfaces is required: IDs of interfaces, already configured, that reach the
	// MMDS. It is written as [] when nil.
	NetworkInterfaces []string `json:"network_interfaces"`
	// IPv4Address is a link-local address; Firecracker's default is 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// IMDSCompat always answers in EC2 IMDS text format (v1.13 or newer).
	IMDSCompat bool `json:"imds_compat,omitempty"`
}

// MarshalJSON writes NetworkInterfaces as [] when it is nil.
func (m MMDSConfig) MarshalJSON() ([]byte, error) {
	type plain MMDSConfig
	if m.NetworkInterfaces == nil {
		m.NetworkInterfaces = []string{}
	}
	return json.Marshal(plain(m))
}

// PutMMDSConfig configures the metadata service. Pre-boot only.
func (c *Client) PutMMDSConfig(ctx context.Context, m MMDSConfig) error {
	return c.send(ctx, http.MethodPut, "/mmds/config", m)
}

// PutMMDS replaces the metadata store with data, marshalled with encoding/json (pass a
// json.RawMessage for JSON already encoded). The store is not kept in snapshots, and its size
// is capped (51200 bytes by default; over it Firecracker answers 413).
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.send(ctx, http.MethodPut, "/mmds", data)
}

// PatchMMDS applies an RFC 7396 JSON merge patch to the metadata store.
func (c *Client) PatchMMDS(ctx context.Context, patch any) error {
	return c.send(ctx, http.MethodPatch, "/mmds", patch)
}

// GetMMDS decodes the metadata store ({} when empty) into out, as json.Unmarshal does.
func (c *Client) GetMMDS(ctx context.Context, out any) error {
	return c.call(ctx, request{method: http.MethodGet, path: "/mmds", out: out})
}
