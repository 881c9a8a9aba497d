package fcapi

import (
	"context"
	"fmt"
	"net/http"
)

// CacheType is a drive's caching strategy.
type CacheType string

// Drive cache types. CacheUnsafe (the default) does not offer the guest a flush; CacheWriteback
// does, and Firecracker fsyncs on it.
const (
	CacheUnsafe    CacheType = "Unsafe"
	CacheWriteback CacheType = "Writeback"
)

// IOEngine is a virtio-block drive's I/O engine.
type IOEngine string

// I/O engines. IOEngineAsync uses io_uring (host kernel 5.10.51 or newer).
const (
	IOEngineSync  IOEngine = "Sync"
	IOEngineAsync IOEngine = "Async"
)

// Drive is the body of PUT /drives/{drive_id}: a virtio-block drive backed by PathOnHost, or a
// vhost-user-block drive backed by the server at Socket.
type Drive struct {
	// DriveID is required: letters, digits and '_' only.
	DriveID string `json:"drive_id"`
	// PathOnHost is the backing file of a virtio-block drive. Firecracker opens it at PUT time
	// and does not lock it.
	PathOnHost string `json:"path_on_host,omitempty"`
	// IsRootDevice makes this the root device (at most one across drives and pmem).
	IsRootDevice bool `json:"is_root_device"`
	IsReadOnly   bool `json:"is_read_only,omitempty"`
	// PartUUID selects the root partition (root=PARTUUID=...) of a root device.
	PartUUID    string       `json:"partuuid,omitempty"`
	CacheType   CacheType    `json:"cache_type,omitempty"`
	IOEngine    IOEngine     `json:"io_engine,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
	// Socket is the vhost-user-block backend's socket; leave PathOnHost, IsReadOnly, IOEngine
	// and RateLimiter unset with it.
	Socket string `json:"socket,omitempty"`
}

// DriveUpdate is the body of PATCH /drives/{drive_id}.
type DriveUpdate struct {
	DriveID string `json:"drive_id"`
	// PathOnHost points the drive at another file; the guest sees a resize.
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// PutDrive adds or replaces a drive. Before boot it configures one; after boot, on v1.16 or
// newer started with --enable-pci, it hot-plugs one.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.withID(ctx, http.MethodPut, "/drives/{drive_id}", "/drives/", "drive", d.DriveID, d)
}

// PatchDrive changes a drive's backing file or rate limiter. Post-boot only.
func (c *Client) PatchDrive(ctx context.Context, u DriveUpdate) error {
	return c.withID(ctx, http.MethodPatch, "/drives/{drive_id}", "/drives/", "drive", u.DriveID, u)
}

// DeleteDrive hot-unplugs a drive (v1.16 or newer with --enable-pci; the guest must release
// the device first). Post-boot only.
func (c *Client) DeleteDrive(ctx context.Context, id string) error {
	return c.withID(ctx, http.MethodDelete, "/drives/{drive_id}", "/drives/", "drive", id, nil)
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	// IfaceID is required: letters, digits and '_' only.
	IfaceID string `json:"iface_id"`
	// HostDevName is required: the host TAP device's name, such as "tap0".
	HostDevName string `json:"host_dev_name"`
	// GuestMAC such as "06:00:AC:10:00:02"; empty lets the guest choose.
	GuestMAC string `json:"guest_mac,omitempty"`
	// MTU (68 to 65535) is advertised to the guest; v1.16 or newer.
	MTU           int          `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// NetworkInterfaceUpdate is the body of PATCH /network-interfaces/{iface_id}; a bucket left
// nil stays as it is.
type NetworkInterfaceUpdate struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PutNetworkInterface adds a network interface (a hot-plug after boot, as for PutDrive).
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.withID(ctx, http.MethodPut, "/network-interfaces/{iface_id}", "/network-interfaces/", "network interface", n.IfaceID, n)
}

// PatchNetworkInterface changes an interface's rate limiters. Post-boot only.
func (c *Client) PatchNetworkInterface(ctx context.Context, u NetworkInterfaceUpdate) error {
	return c.withID(ctx, http.MethodPatch, "/network-interfaces/{iface_id}", "/network-interfaces/", "network interface", u.IfaceID, u)
}

// DeleteNetworkInterface hot-unplugs an interface (as DeleteDrive). Post-boot only.
func (c *Client) DeleteNetworkInterface(ctx context.Context, id string) error {
	return c.withID(ctx, http.MethodDelete, "/network-interfaces/{iface_id}", "/network-interfaces/", "network interface", id, nil)
}

// Pmem is the body of PUT /pmem/{id}: a virtio-pmem device (v1.14 or newer).
type Pmem struct {
	// ID is required: letters, digits and '_' only.
	ID string `json:"id"`
	// PathOnHost is required: the backing file.
	PathOnHost string `json:"path_on_host"`
	// RootDevice makes this the root device (root=/dev/pmemN).
	RootDevice bool `json:"root_device,omitempty"`
	// ReadOnly maps the file read-only; a guest write then crashes the VM.
	ReadOnly bool `json:"read_only,omitempty"`
	// RateLimiter limits the guest's flush requests; v1.16 or newer.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// PmemUpdate is the body of PATCH /pmem/{id} (v1.16 or newer).
type PmemUpdate struct {
	ID          string       `json:"id"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// PutPmem adds a pmem device (a hot-plug after boot, as for PutDrive).
func (c *Client) PutPmem(ctx context.Context, p Pmem) error {
	return c.withID(ctx, http.MethodPut, "/pmem/{id}", "/pmem/", "pmem device", p.ID, p)
}

// PatchPmem changes a pmem device's rate limiter. Post-boot only.
func (c *Client) PatchPmem(ctx context.Context, u PmemUpdate) error {
	return c.withID(ctx, http.MethodPatch, "/pmem/{id}", "/pmem/", "pmem device", u.ID, u)
}

// DeletePmem hot-unplugs a pmem device (as DeleteDrive). Post-boot only.
func (c *Client) DeletePmem(ctx context.Context, id string) error {
	return c.withID(ctx, http.MethodDelete, "/pmem/{id}", "/pmem/", "pmem device", id, nil)
}

// withID sends a request to a per-device endpoint after checking the ID, which goes into the
// path as is.
func (c *Client) withID(ctx context.Context, method, tmpl, prefix, noun, id string, in any) error {
	if err := checkID(noun, id); err != nil {
		return err
	}
	return c.call(ctx, request{method: method, op: method + " " + tmpl, path: prefix + id, in: in})
}

// checkID applies Firecracker's rule for device IDs: non-empty, ASCII letters, digits and '_'.
func checkID(noun, id string) error {
	if id == "" {
		return fmt.Errorf("%s id is empty: Firecracker needs an ID of ASCII letters, digits and '_'", noun)
	}
	for _, r := range id {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '_') {
			return fmt.Errorf("%s id %q: Firecracker accepts only ASCII letters, digits and '_' in IDs", noun, id)
		}
	}
	return nil
}
