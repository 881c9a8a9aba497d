package fakefc

// The request bodies as Go values. They are filled from a body already checked by decode
// (serde.go), so their JSON decoding cannot fail on shape; pointers mark optional fields.

type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path"`
	BootArgs        *string `json:"boot_args"`
}

type machineConfig struct {
	VcpuCount       uint8   `json:"vcpu_count"`
	MemSizeMib      uint64  `json:"mem_size_mib"`
	Smt             bool    `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages bool    `json:"track_dirty_pages"`
	HugePages       string  `json:"huge_pages"`
}

type machineConfigUpdate struct {
	VcpuCount       *uint8  `json:"vcpu_count"`
	MemSizeMib      *uint64 `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

func (u machineConfigUpdate) empty() bool {
	return u.VcpuCount == nil && u.MemSizeMib == nil && u.Smt == nil && u.CPUTemplate == nil &&
		u.TrackDirtyPages == nil && u.HugePages == nil
}

type tokenBucket struct {
	Size         uint64  `json:"size"`
	OneTimeBurst *uint64 `json:"one_time_burst"`
	RefillTime   uint64  `json:"refill_time"`
}

type rateLimiter struct {
	Bandwidth *tokenBucket `json:"bandwidth"`
	Ops       *tokenBucket `json:"ops"`
}

type driveConfig struct {
	DriveID      string       `json:"drive_id"`
	Partuuid     *string      `json:"partuuid"`
	IsRootDevice bool         `json:"is_root_device"`
	CacheType    string       `json:"cache_type"`
	IsReadOnly   *bool        `json:"is_read_only"`
	PathOnHost   *string      `json:"path_on_host"`
	RateLimiter  *rateLimiter `json:"rate_limiter"`
	IoEngine     *string      `json:"io_engine"`
	Socket       *string      `json:"socket"`
}

type driveUpdate struct {
	DriveID     string       `json:"drive_id"`
	PathOnHost  *string      `json:"path_on_host"`
	RateLimiter *rateLimiter `json:"rate_limiter"`
}

type netConfig struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      *string      `json:"guest_mac"`
	MTU           *uint16      `json:"mtu"`
	RxRateLimiter *rateLimiter `json:"rx_rate_limiter"`
	TxRateLimiter *rateLimiter `json:"tx_rate_limiter"`
}

type netUpdate struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *rateLimiter `json:"rx_rate_limiter"`
	TxRateLimiter *rateLimiter `json:"tx_rate_limiter"`
}

type pmemConfig struct {
	ID          string       `json:"id"`
	PathOnHost  string       `json:"path_on_host"`
	RootDevice  bool         `json:"root_device"`
	ReadOnly    bool         `json:"read_only"`
	RateLimiter *rateLimiter `json:"rate_limiter"`
}

type pmemUpdate struct {
	ID          string       `json:"id"`
	RateLimiter *rateLimiter `json:"rate_limiter"`
}

type vsockConfig struct {
	VsockID  *string `json:"vsock_id"`
	GuestCID uint32  `json:"guest_cid"`
	UDSPath  string  `json:"uds_path"`
}

type balloonConfig struct {
	AmountMib             uint32 `json:"amount_mib"`
	DeflateOnOOM          bool   `json:"deflate_on_oom"`
	StatsPollingIntervalS uint16 `json:"stats_polling_interval_s"`
	FreePageHinting       bool   `json:"free_page_hinting"`
	FreePageReporting     bool   `json:"free_page_reporting"`
}

type balloonUpdate struct {
	AmountMib uint32 `json:"amount_mib"`
}

type balloonStatsUpdate struct {
	StatsPollingIntervalS uint16 `json:"stats_polling_interval_s"`
}

type hintingStart struct {
	AcknowledgeOnStop *bool `json:"acknowledge_on_stop"`
}

type entropyConfig struct {
	RateLimiter *rateLimiter `json:"rate_limiter"`
}

type serialConfig struct {
	SerialOutPath *string      `json:"serial_out_path"`
	RateLimiter   *tokenBucket `json:"rate_limiter"`
}

type mmdsConfig struct {
	Version           *string  `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       *string  `json:"ipv4_address"`
	ImdsCompat        *bool    `json:"imds_compat"`
}

type hotplugConfig struct {
	TotalSizeMib uint64  `json:"total_size_mib"`
	BlockSizeMib *uint64 `json:"block_size_mib"`
	SlotSizeMib  *uint64 `json:"slot_size_mib"`
}

type hotplugUpdate struct {
	RequestedSizeMib uint64 `json:"requested_size_mib"`
}

type metricsConfig struct {
	MetricsPath string `json:"metrics_path"`
}

type actionBody struct {
	ActionType string `json:"action_type"`
}

type vmBody struct {
	State string `json:"state"`
}

type snapshotCreate struct {
	SnapshotType *string `json:"snapshot_type"`
	SnapshotPath string  `json:"snapshot_path"`
	MemFilePath  string  `json:"mem_file_path"`
}

type memBackend struct {
	BackendPath string `json:"backend_path"`
	BackendType string `json:"backend_type"`
}

type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

type vsockOverride struct {
	UDSPath string `json:"uds_path"`
}

type snapshotLoad struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemFilePath         *string           `json:"mem_file_path"`
	MemBackend          *memBackend       `json:"mem_backend"`
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages"`
	ResumeVM            bool              `json:"resume_vm"`
	NetworkOverrides    []networkOverride `json:"network_overrides"`
	VsockOverride       *vsockOverride    `json:"vsock_override"`
	ClockRealtime       bool              `json:"clock_realtime"`
	HugePages           *string           `json:"huge_pages"`
}
