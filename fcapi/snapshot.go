package fcapi

import (
	"context"
	"net/http"
)

// SnapshotType is the kind of snapshot to create.
type SnapshotType string

// Snapshot types. SnapshotDiff (developer preview) saves only the memory dirtied since the
// previous snapshot.
const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreateParams is the body of PUT /snapshot/create. Existing files are truncated.
type SnapshotCreateParams struct {
	// SnapshotPath is required: the VM state file.
	SnapshotPath string `json:"snapshot_path"`
	// MemFilePath is required: the guest memory file.
	MemFilePath  string       `json:"mem_file_path"`
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
}

// CreateSnapshot saves the paused VM (pause it first with PauseVM); the VM stays paused. The
// call gets no default timeout: it takes as long as writing the memory takes, and blocks every
// other API call meanwhile, so bound it with ctx.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.call(ctx, request{method: http.MethodPut, path: "/snapshot/create", in: p, slow: true})
}

// MemBackendType says how a restored VM's memory is served.
type MemBackendType string

// Memory backends: MemBackendFile maps a memory file (it must stay unchanged for the VM's
// life); MemBackendUffd hands the page faults to the userfaultfd handler listening on a socket.
const (
	MemBackendFile MemBackendType = "File"
	MemBackendUffd MemBackendType = "Uffd"
)

// MemoryBackend is where a snapshot's memory comes from.
type MemoryBackend struct {
	BackendType MemBackendType `json:"backend_type"`
	// BackendPath is the memory file (File) or the handler's socket (Uffd).
	BackendPath string `json:"backend_path"`
}

// NetworkOverride points a restored network interface at another TAP device (v1.12 or newer).
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride moves a restored vsock device to another socket path (v1.16 or newer).
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load. The client writes the deprecated forms
// (mem_file_path, enable_diff_snapshots) itself when the running release lacks the new ones.
type SnapshotLoadParams struct {
	// SnapshotPath is required: the VM state file.
	SnapshotPath string        `json:"snapshot_path"`
	MemBackend   MemoryBackend `json:"mem_backend"`
	// TrackDirtyPages enables dirty page tracking for later diff snapshots. Before v1.13 the
	// client sends it as enable_diff_snapshots.
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// ResumeVM resumes the VM once loaded; otherwise it stays paused.
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
	// ClockRealtime advances the guest's kvmclock by the wall time elapsed since the snapshot
	// (x86_64).
	ClockRealtime bool `json:"clock_realtime,omitempty"`
	// HugePages overrides the snapshot's huge-page setting; newer than v1.16.1. HugePages2M
	// needs a Uffd backend.
	HugePages HugePages `json:"huge_pages,omitempty"`
}

// snapshotLoadBody is what goes on the wire: the params, with their fields moved to the
// deprecated names where the running release lacks the new ones. Its own fields hide the
// embedded ones of the same JSON name.
type snapshotLoadBody struct {
	SnapshotLoadParams
	MemBackend          *MemoryBackend `json:"mem_backend,omitempty"`
	MemFilePath         string         `json:"mem_file_path,omitempty"`
	TrackDirtyPages     bool           `json:"track_dirty_pages,omitempty"`
	EnableDiffSnapshots bool           `json:"enable_diff_snapshots,omitempty"`
}

const opSnapshotLoad = "PUT /snapshot/load"

// LoadSnapshot restores a VM into this fresh Firecracker process: only the logger, metrics,
// serial, cpu-config and MMDS data may have been configured before. If the load fails, the
// process exits; start a new one to retry. The call gets no default timeout. Re-PUT the MMDS
// data afterwards: it is not in the snapshot.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	body, err := c.snapshotLoadBody(ctx, p)
	if err != nil {
		return err
	}
	return c.call(ctx, request{method: http.MethodPut, path: "/snapshot/load", in: body, slow: true})
}

func (c *Client) snapshotLoadBody(ctx context.Context, p SnapshotLoadParams) (snapshotLoadBody, error) {
	b := snapshotLoadBody{SnapshotLoadParams: p, MemBackend: &p.MemBackend, TrackDirtyPages: p.TrackDirtyPages}
	trackSince := c.features.since(opSnapshotLoad, "track_dirty_pages")
	backendSince := c.features.since(opSnapshotLoad, "mem_backend")
	if (!p.TrackDirtyPages || trackSince.IsZero()) && backendSince.IsZero() {
		return b, nil
	}
	v, err := c.Version(ctx)
	if err != nil {
		return b, err
	}
	if p.TrackDirtyPages && !v.AtLeast(trackSince) {
		b.TrackDirtyPages, b.EnableDiffSnapshots = false, true
	}
	if !v.AtLeast(backendSince) {
		if p.MemBackend.BackendType != MemBackendFile {
			f := feature{op: opSnapshotLoad, field: "mem_backend", since: backendSince}
			return b, &UnsupportedError{Feature: f.describe() + " (backend_type " + string(p.MemBackend.BackendType) + ")", Since: backendSince, Running: v}
		}
		b.MemBackend, b.MemFilePath = nil, p.MemBackend.BackendPath
	}
	return b, nil
}

// SnapshotLoadFieldSince returns the first release whose PUT /snapshot/load has field (its
// JSON name, such as "network_overrides" or "vsock_override"); zero when every supported
// release has it or it is not a field of the request.
func SnapshotLoadFieldSince(field string) Version { return specTable.since(opSnapshotLoad, field) }
