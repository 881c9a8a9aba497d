package fcapi

import (
	"context"
	"net/http"
)

// BootSource is the body of PUT /boot-source. Firecracker opens both files at PUT time.
type BootSource struct {
	// KernelImagePath is required: an uncompressed ELF vmlinux on x86_64, a PE Image on aarch64.
	KernelImagePath string `json:"kernel_image_path"`
	// BootArgs is the kernel command line; empty means Firecracker's default one.
	BootArgs   string `json:"boot_args,omitempty"`
	InitrdPath string `json:"initrd_path,omitempty"`
}

// PutBootSource sets the kernel, its command line and an optional initrd. Pre-boot only.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.send(ctx, http.MethodPut, "/boot-source", b)
}

// HugePages selects how guest memory is backed.
type HugePages string

// Huge-page settings. HugePagesTransparent is newer than v1.16.1 on machine-config; on
// snapshot load every value, HugePagesSnapshot included, is.
const (
	HugePagesNone        HugePages = "None"
	HugePages2M          HugePages = "2M"
	HugePagesTransparent HugePages = "Transparent"
	// HugePagesSnapshot (snapshot load only) keeps the setting saved in the snapshot.
	HugePagesSnapshot HugePages = "Snapshot"
)

// CPUTemplate is a static CPU template (deprecated in Firecracker in favour of PUT /cpu-config;
// setting it makes Firecracker answer with "Deprecation: true").
type CPUTemplate string

// Static CPU templates: C3, T2, T2S, T2CL and T2A are x86_64, V1N1 aarch64.
const (
	CPUTemplateC3   CPUTemplate = "C3"
	CPUTemplateT2   CPUTemplate = "T2"
	CPUTemplateT2S  CPUTemplate = "T2S"
	CPUTemplateT2CL CPUTemplate = "T2CL"
	CPUTemplateT2A  CPUTemplate = "T2A"
	CPUTemplateV1N1 CPUTemplate = "V1N1"
	CPUTemplateNone CPUTemplate = "None"
)

// MachineConfig is the body of PUT /machine-config and the answer to GET /machine-config.
// Before any PUT, Firecracker reports 1 vCPU and 128 MiB.
type MachineConfig struct {
	// VCPUCount is required: 1 to 32; 1 or even when SMT is on.
	VCPUCount int `json:"vcpu_count"`
	// MemSizeMiB is required: the guest memory in MiB.
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT enables simultaneous multithreading (x86_64 only).
	SMT bool `json:"smt,omitempty"`
	// TrackDirtyPages enables dirty page tracking, needed for diff snapshots.
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// HugePages is HugePagesNone (the default), HugePages2M or HugePagesTransparent.
	HugePages HugePages `json:"huge_pages,omitempty"`
	// CPUTemplate is deprecated; prefer PutCPUConfig.
	CPUTemplate CPUTemplate `json:"cpu_template,omitempty"`
}

// MachineConfigUpdate is the body of PATCH /machine-config: only the fields set change.
type MachineConfigUpdate struct {
	VCPUCount       int         `json:"vcpu_count,omitempty"`
	MemSizeMiB      int         `json:"mem_size_mib,omitempty"`
	SMT             *bool       `json:"smt,omitempty"`
	TrackDirtyPages *bool       `json:"track_dirty_pages,omitempty"`
	HugePages       HugePages   `json:"huge_pages,omitempty"`
	CPUTemplate     CPUTemplate `json:"cpu_template,omitempty"`
}

// GetMachineConfig asks GET /machine-config.
func (c *Client) GetMachineConfig(ctx context.Context) (MachineConfig, error) {
	return get[MachineConfig](ctx, c, "/machine-config")
}

// PutMachineConfig replaces the machine configuration; optional fields left unset return to
// their defaults. Pre-boot only.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.send(ctx, http.MethodPut, "/machine-config", m)
}

// PatchMachineConfig changes the fields set in u (at least one). Pre-boot only.
func (c *Client) PatchMachineConfig(ctx context.Context, u MachineConfigUpdate) error {
	return c.send(ctx, http.MethodPatch, "/machine-config", u)
}

// CPUConfig is a custom CPU template, the body of PUT /cpu-config. Numbers in strings may be
// decimal, hexadecimal (0x) or binary (0b); bitmaps are "0b" followed by 0, 1 or x per bit.
// Firecracker accepts only the fields of its own architecture: KVMCapabilities with
// CPUIDModifiers and MSRModifiers on x86_64, with RegModifiers and VCPUFeatures on aarch64.
type CPUConfig struct {
	// KVMCapabilities adds ("121") or removes ("!121") KVM capabilities.
	KVMCapabilities []string            `json:"kvm_capabilities,omitempty"`
	CPUIDModifiers  []CPUIDLeafModifier `json:"cpuid_modifiers,omitempty"` // x86_64
	MSRModifiers    []MSRModifier       `json:"msr_modifiers,omitempty"`   // x86_64
	RegModifiers    []RegModifier       `json:"reg_modifiers,omitempty"`   // aarch64
	VCPUFeatures    []VCPUFeature       `json:"vcpu_features,omitempty"`   // aarch64
}

// CPUIDLeafModifier modifies one CPUID leaf and subleaf (x86_64).
type CPUIDLeafModifier struct {
	Leaf      string                  `json:"leaf"`
	Subleaf   string                  `json:"subleaf"`
	Flags     int32                   `json:"flags"`
	Modifiers []CPUIDRegisterModifier `json:"modifiers"`
}

// CPUIDRegisterModifier modifies one register of a CPUID leaf: Register is eax, ebx, ecx or
// edx; Bitmap is "0b" and 32 characters.
type CPUIDRegisterModifier struct {
	Register string `json:"register"`
	Bitmap   string `json:"bitmap"`
}

// MSRModifier modifies one model-specific register (x86_64); Bitmap is "0b" and 64 characters.
type MSRModifier struct {
	Addr   string `json:"addr"`
	Bitmap string `json:"bitmap"`
}

// RegModifier modifies one ARM register (aarch64); Bitmap is "0b" and up to 128 characters.
type RegModifier struct {
	Addr   string `json:"addr"`
	Bitmap string `json:"bitmap"`
}

// VCPUFeature modifies one word of kvm_vcpu_init.features (aarch64).
type VCPUFeature struct {
	Index  int32  `json:"index"`
	Bitmap string `json:"bitmap"`
}

// PutCPUConfig sets a custom CPU template. Pre-boot only. Firecracker caps a request body at
// 51200 bytes unless started with a larger --http-api-max-payload-size.
func (c *Client) PutCPUConfig(ctx context.Context, cfg CPUConfig) error {
	return c.send(ctx, http.MethodPut, "/cpu-config", cfg)
}
