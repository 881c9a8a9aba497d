package fcapi

import (
	"context"
	"net/http"
)

// Vsock is the body of PUT /vsock. Firecracker binds and listens on UDSPath at PUT time (the
// path must not exist) and never removes it.
type Vsock struct {
	// GuestCID is required: 3 or more.
	GuestCID int `json:"guest_cid"`
	// UDSPath is required: host-to-guest connections go to it ("CONNECT <port>\n"), and
	// guest-to-host ones to UDSPath_<port>.
	UDSPath string `json:"uds_path"`
}

// PutVsock adds the vsock device (only one). Pre-boot only.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.send(ctx, http.MethodPut, "/vsock", v)
}

// EntropyDevice is the body of PUT /entropy: a virtio-rng device.
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// PutEntropy adds the entropy device. Pre-boot only.
func (c *Client) PutEntropy(ctx context.Context, e EntropyDevice) error {
	return c.send(ctx, http.MethodPut, "/entropy", e)
}

// SerialDevice is the body of PUT /serial (v1.14 or newer).
type SerialDevice struct {
	// SerialOutPath receives the guest's serial output (a file or FIFO, created if missing)
	// instead of Firecracker's stdout; there is no serial input then.
	SerialOutPath string `json:"serial_out_path,omitempty"`
	// RateLimiter drops output bytes over the limit; v1.16 or newer.
	RateLimiter *TokenBucket `json:"rate_limiter,omitempty"`
}

// PutSerial configures the serial console's output. Pre-boot only.
func (c *Client) PutSerial(ctx context.Context, s SerialDevice) error {
	return c.send(ctx, http.MethodPut, "/serial", s)
}

// Balloon is the body of PUT /balloon and the answer to GET /balloon.
type Balloon struct {
	// AmountMiB is the balloon's target size.
	AmountMiB int `json:"amount_mib"`
	// DeflateOnOOM lets the guest deflate the balloon under memory pressure.
	DeflateOnOOM bool `json:"deflate_on_oom"`
	// StatsPollingIntervalS enables statistics (GET /balloon/statistics) when non-zero; it
	// can be switched on only before boot.
	StatsPollingIntervalS int `json:"stats_polling_interval_s,omitempty"`
	// FreePageHinting enables free page hinting (v1.14 or newer).
	FreePageHinting bool `json:"free_page_hinting,omitempty"`
	// FreePageReporting enables free page reporting (v1.14 or newer).
	FreePageReporting bool `json:"free_page_reporting,omitempty"`
}

// BalloonUpdate is the body of PATCH /balloon.
type BalloonUpdate struct {
	AmountMiB int `json:"amount_mib"`
}

// BalloonStats is the answer to GET /balloon/statistics. The counters the guest did not report
// are zero.
type BalloonStats struct {
	TargetPages int `json:"target_pages"`
	ActualPages int `json:"actual_pages"`
	TargetMiB   int `json:"target_mib"`
	ActualMiB   int `json:"actual_mib"`

	SwapIn             int64 `json:"swap_in,omitempty"`
	SwapOut            int64 `json:"swap_out,omitempty"`
	MajorFaults        int64 `json:"major_faults,omitempty"`
	MinorFaults        int64 `json:"minor_faults,omitempty"`
	FreeMemory         int64 `json:"free_memory,omitempty"`
	TotalMemory        int64 `json:"total_memory,omitempty"`
	AvailableMemory    int64 `json:"available_memory,omitempty"`
	DiskCaches         int64 `json:"disk_caches,omitempty"`
	HugetlbAllocations int64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    int64 `json:"hugetlb_failures,omitempty"`
	// The rest come from guest kernels 6.12 and newer, on Firecracker v1.14 or newer.
	OOMKill       int64 `json:"oom_kill,omitempty"`
	AllocStall    int64 `json:"alloc_stall,omitempty"`
	AsyncScan     int64 `json:"async_scan,omitempty"`
	DirectScan    int64 `json:"direct_scan,omitempty"`
	AsyncReclaim  int64 `json:"async_reclaim,omitempty"`
	DirectReclaim int64 `json:"direct_reclaim,omitempty"`
}

// BalloonStatsUpdate is the body of PATCH /balloon/statistics. The interval cannot go to or
// from 0 after boot.
type BalloonStatsUpdate struct {
	StatsPollingIntervalS int `json:"stats_polling_interval_s"`
}

// BalloonHintingStart is the body of PATCH /balloon/hinting/start.
type BalloonHintingStart struct {
	// AcknowledgeOnStop makes Firecracker acknowledge the guest's "done" by itself.
	AcknowledgeOnStop bool `json:"acknowledge_on_stop,omitempty"`
}

// BalloonHintingStatus is the answer to GET /balloon/hinting/status.
type BalloonHintingStatus struct {
	// HostCmd is the last command the host issued.
	HostCmd int `json:"host_cmd"`
	// GuestCmd is the last command the guest reported; nil before it reported any.
	GuestCmd *int `json:"guest_cmd,omitempty"`
}

// PutBalloon adds or replaces the balloon device. Pre-boot only.
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	return c.send(ctx, http.MethodPut, "/balloon", b)
}

// GetBalloon asks GET /balloon; it fails when no balloon is configured.
func (c *Client) GetBalloon(ctx context.Context) (Balloon, error) {
	return get[Balloon](ctx, c, "/balloon")
}

// PatchBalloon changes the balloon's target size. Post-boot only (whatever the spec says).
func (c *Client) PatchBalloon(ctx context.Context, u BalloonUpdate) error {
	return c.send(ctx, http.MethodPatch, "/balloon", u)
}

// GetBalloonStats asks GET /balloon/statistics; it fails unless statistics were enabled
// before boot. Post-boot only.
func (c *Client) GetBalloonStats(ctx context.Context) (BalloonStats, error) {
	return get[BalloonStats](ctx, c, "/balloon/statistics")
}

// PatchBalloonStats changes the statistics polling interval. Post-boot only.
func (c *Client) PatchBalloonStats(ctx context.Context, u BalloonStatsUpdate) error {
	return c.send(ctx, http.MethodPatch, "/balloon/statistics", u)
}

// StartBalloonHinting starts a free page hinting run (v1.14 or newer; hinting enabled before
// boot). Post-boot only.
func (c *Client) StartBalloonHinting(ctx context.Context, s BalloonHintingStart) error {
	return c.send(ctx, http.MethodPatch, "/balloon/hinting/start", s)
}

// GetBalloonHintingStatus asks GET /balloon/hinting/status (v1.14 or newer). Post-boot only.
func (c *Client) GetBalloonHintingStatus(ctx context.Context) (BalloonHintingStatus, error) {
	return get[BalloonHintingStatus](ctx, c, "/balloon/hinting/status")
}

// StopBalloonHinting stops the free page hinting run (v1.14 or newer). Post-boot only.
func (c *Client) StopBalloonHinting(ctx context.Context) error {
	return c.call(ctx, request{method: http.MethodPatch, path: "/balloon/hinting/stop"})
}

// MemoryHotplugConfig is the body of PUT /hotplug/memory: a virtio-mem device (v1.14 or
// newer). Unset sizes take Firecracker's defaults (slot 128 MiB, block 2 MiB).
type MemoryHotplugConfig struct {
	// TotalSizeMiB is the most memory that can be plugged: a multiple of SlotSizeMiB.
	TotalSizeMiB int `json:"total_size_mib,omitempty"`
	// SlotSizeMiB is at least 128 and a multiple of BlockSizeMiB.
	SlotSizeMiB int `json:"slot_size_mib,omitempty"`
	// BlockSizeMiB is at least 2 and a power of 2.
	BlockSizeMiB int `json:"block_size_mib,omitempty"`
}

// MemoryHotplugSizeUpdate is the body of PATCH /hotplug/memory.
type MemoryHotplugSizeUpdate struct {
	// RequestedSizeMiB is the plugged size wanted: a multiple of the block size, at most the
	// total; 0 unplugs everything.
	RequestedSizeMiB int `json:"requested_size_mib"`
}

// MemoryHotplugStatus is the answer to GET /hotplug/memory; poll it until PluggedSizeMiB
// reaches RequestedSizeMiB.
type MemoryHotplugStatus struct {
	TotalSizeMiB     int `json:"total_size_mib"`
	SlotSizeMiB      int `json:"slot_size_mib"`
	BlockSizeMiB     int `json:"block_size_mib"`
	PluggedSizeMiB   int `json:"plugged_size_mib"`
	RequestedSizeMiB int `json:"requested_size_mib"`
}

// PutMemoryHotplug adds the hot-pluggable memory device, fully unplugged. Pre-boot only.
func (c *Client) PutMemoryHotplug(ctx context.Context, m MemoryHotplugConfig) error {
	return c.send(ctx, http.MethodPut, "/hotplug/memory", m)
}

// PatchMemoryHotplug asks the guest to plug or unplug memory; it does so asynchronously.
// Post-boot only.
func (c *Client) PatchMemoryHotplug(ctx context.Context, u MemoryHotplugSizeUpdate) error {
	return c.send(ctx, http.MethodPatch, "/hotplug/memory", u)
}

// GetMemoryHotplug asks GET /hotplug/memory. Post-boot only.
func (c *Client) GetMemoryHotplug(ctx context.Context) (MemoryHotplugStatus, error) {
	return get[MemoryHotplugStatus](ctx, c, "/hotplug/memory")
}
