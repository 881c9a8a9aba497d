package smartvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/netdev"
)

// DefaultBootArgs is the kernel command line used when MachineSpec.BootArgs is empty (and no
// base image supplies one): a serial console on ttyS0, a guest reboot that ends Firecracker,
// and a reboot one second after a guest panic. smartvm never adds pci=off: Firecracker does
// that itself unless PCI is enabled.
const DefaultBootArgs = "console=ttyS0 reboot=k panic=1"

// Defaults for MachineSpec fields left at their zero value.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 512
	DefaultLogLevel  = fcapi.LogInfo
)

// Limits MachineSpec.Validate enforces.
const (
	// MaxVCPUs is Firecracker's vCPU limit.
	MaxVCPUs = 32
	// MaxMemoryMiB (1 TiB) catches a memory size given in the wrong unit.
	MaxMemoryMiB = 1 << 20
	// MaxSocketPath is the longest Unix socket path (sun_path holds 108 bytes with the NUL).
	MaxSocketPath = 107
)

// BootMode is how Start configures and boots Firecracker.
type BootMode string

// Boot modes.
const (
	// BootModeAPI configures the VM with one API request per item, then InstanceStart.
	BootModeAPI BootMode = "api"
	// BootModeConfigFile writes the whole configuration to config.json and starts Firecracker
	// with --config-file: no API round trips before boot. The API socket still serves pause,
	// resume and stop afterwards.
	BootModeConfigFile BootMode = "config-file"
)

// MachineSpec describes a microVM. It is pure data: it can be stored (it is part of
// state.json), compared and diffed. Start resolves everything host-dependent.
//
// Either Kernel (with a root drive among Drives, or an initrd) or one of the BaseImage fields
// names what to boot.
type MachineSpec struct {
	// Name identifies the VM in the runtime root and is Firecracker's --id: 1 to 64 ASCII
	// letters, digits or '-', not starting with '-'. With the agent it is also the guest's
	// host name, without the '-' it may end in ("web-" gives host "web"). Zero value: Start
	// picks "vm-" and 8 random hex digits.
	Name string `json:"name,omitempty"`

	// Kernel is the guest kernel (an uncompressed ELF vmlinux on x86_64). Required unless a
	// base image is named.
	Kernel string `json:"kernel,omitempty"`
	// Initrd is an optional initrd.
	Initrd string `json:"initrd,omitempty"`
	// BootArgs is the kernel command line. Zero value: the base image's, else DefaultBootArgs.
	BootArgs string `json:"boot_args,omitempty"`

	// VCPUs is the number of vCPUs, 1 to MaxVCPUs. Zero value: DefaultVCPUs.
	VCPUs int `json:"vcpus,omitempty"`
	// MemoryMiB is the guest memory in MiB, at most MaxMemoryMiB. Zero value:
	// DefaultMemoryMiB.
	MemoryMiB int `json:"memory_mib,omitempty"`

	// SMT enables simultaneous multithreading (x86_64 only): the guest sees two threads per
	// core, and VCPUs must then be 1 or even. Zero value: off.
	SMT bool `json:"smt,omitempty"`
	// HugePages backs guest memory with huge pages: fcapi.HugePages2M (the host needs free
	// 2 MiB hugetlbfs pages, and MemoryMiB a multiple of 2) or fcapi.HugePagesTransparent
	// (newer than v1.16.1). Zero value: fcapi.HugePagesNone, ordinary pages.
	HugePages fcapi.HugePages `json:"huge_pages,omitempty"`
	// TrackDirtyPages has KVM track the pages the guest writes, which Machine.SnapshotDiff
	// needs; a VM restored from this spec's snapshots tracks them again. Default: off.
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// CPUTemplate is a static CPU template that masks CPU features from the guest: C3, T2,
	// T2S, T2CL or T2A (x86_64), V1N1 (aarch64). Zero value: none (the host's CPU as
	// Firecracker exposes it by default).
	CPUTemplate fcapi.CPUTemplate `json:"cpu_template,omitempty"`

	// Drives are the block devices, in order. At most one is the root drive.
	Drives []DriveSpec `json:"drives,omitempty"`
	// Interfaces are network interfaces backed by TAP devices that already exist.
	Interfaces []InterfaceSpec `json:"interfaces,omitempty"`
	// Vsock adds a virtio-vsock device. Zero value: none.
	Vsock *VsockSpec `json:"vsock,omitempty"`
	// MMDS configures the microVM metadata service and its data. Zero value: none.
	MMDS *MMDSSpec `json:"mmds,omitempty"`
	// Balloon adds a memory balloon device. Zero value: none.
	Balloon *BalloonSpec `json:"balloon,omitempty"`
	// Entropy adds a virtio-rng device. Zero value: none.
	Entropy *EntropySpec `json:"entropy,omitempty"`

	// LogLevel is Firecracker's log level (Error, Warning, Info, Debug, Trace or Off; any
	// case). The log goes to firecracker.log in the VM's directory. Zero value:
	// DefaultLogLevel.
	LogLevel fcapi.LogLevel `json:"log_level,omitempty"`
	// Metrics makes Firecracker write its metrics (JSON lines) to metrics.json in the VM's
	// directory. Zero value: no metrics.
	Metrics bool `json:"metrics,omitempty"`

	// BootMode is BootModeAPI or BootModeConfigFile. Zero value: BootModeAPI.
	BootMode BootMode `json:"boot_mode,omitempty"`
	// EnablePCI passes --enable-pci (Firecracker v1.13 or newer): virtio devices use PCI
	// instead of MMIO. The guest kernel needs PCI support.
	EnablePCI bool `json:"enable_pci,omitempty"`
	// ExtraArgs are further firecracker flags, such as "--boot-timer" or
	// "--mmds-size-limit", "102400". The flags smartvm sets itself (--api-sock, --id,
	// --config-file, --log-path, --level, --metrics-path, --metadata, --no-api) are refused.
	ExtraArgs []string `json:"extra_args,omitempty"`

	// BaseImagePreset boots a base image from Firecracker's CI bucket instead of Kernel and a
	// root drive: "latest" or "lts". The manager needs WithBaseImages. The image's rootfs is
	// staged as an ephemeral writable root drive.
	BaseImagePreset string `json:"base_image_preset,omitempty"`
	// BaseImageManifestURL boots the base image a hosted manifest (http or https) describes,
	// as BaseImagePreset does.
	BaseImageManifestURL string `json:"base_image_manifest_url,omitempty"`
	// BaseImageManifestPath boots the base image a local manifest file describes, as
	// BaseImagePreset does.
	BaseImageManifestPath string `json:"base_image_manifest_path,omitempty"`
	// BaseImageOCI boots an OCI (Docker) image, such as "alpine:3.20" or
	// "ghcr.io/o/i@sha256:…", as BaseImagePreset does: its layers become the ext4 rootfs, with
	// the guest agent as init running the image's entrypoint (see baseimage.Source.OCI).
	BaseImageOCI string `json:"base_image_oci,omitempty"`

	// SerialInput makes Firecracker's stdin a FIFO (serial.in in the VM directory) so the
	// guest's serial console accepts input: Machine.ConsoleInput writes to it. Off by
	// default: stdin is /dev/null.
	SerialInput bool `json:"serial_input,omitempty"`

	// Labels are the caller's key=value metadata about the VM. smartvm records them (they are
	// part of state.json) and never interprets them; `smartvm ps --filter label=K=V` selects
	// VMs by them. Keys are 1 to 128 bytes of printable ASCII without '=', ',' or spaces;
	// values are at most 4096 bytes of UTF-8 without control characters. Zero value: none.
	Labels map[string]string `json:"labels,omitempty"`

	// Agent installs the guest agent (smartvm-agent, given to the manager with
	// WithAgentBinary) into the VM's staged copy of its root drive before the boot, at
	// /usr/local/bin/smartvm-agent with an enabled systemd unit. The root drive must be
	// ephemeral (a base image's always is): the cached image and persistent drives are never
	// changed. The host reaches the agent over a vsock device (Vsock). With a managed Network
	// and no KernelIPArg, Start also turns on MMDS (V2 on every interface, unless MMDS says
	// otherwise) and puts the guest's network in it, where the agent as PID 1 finds it
	// (MMDSNetworkKey). False (the default): nothing is installed.
	Agent bool `json:"agent,omitempty"`
	// AgentMain says that the guest's init is the agent (as in an OCI image's bundle) and
	// makes it wait for the host before it starts the image's main process: Start adds
	// AgentMainBootArg to the kernel command line, and Machine.MainCommand then starts the
	// main process with overrides and attached stdio. It needs a vsock device (Vsock). False
	// (the default): the guest's init runs what it runs by itself.
	AgentMain bool `json:"agent_main,omitempty"`

	// Network asks smartvm to create the VM's network before boot and remove it at cleanup:
	// a TAP device per NIC with a /30 from the pool, optionally NAT and a network namespace of
	// the VM's own (see package netdev). It needs root, or CAP_NET_ADMIN (and CAP_SYS_ADMIN
	// for a namespace). nil (the default) means no managed network.
	Network *NetworkSpec `json:"network,omitempty"`

	// Jailer runs firecracker through Firecracker's jailer (see JailerSpec). nil (the
	// default) runs it directly, as the calling user.
	Jailer *JailerSpec `json:"jailer,omitempty"`
}

// NetworkSpec describes the network smartvm builds for a VM. Each NIC gets a /30 from Pool:
// the host end on its TAP, the guest the other address, and the guest MAC
// 06:00:<guest address>, from which the Firecracker CI images' fcnet configures the guest.
type NetworkSpec struct {
	// NICs are the VM's network interfaces, at most MaxNICs. Empty: one NIC "eth0".
	NICs []NICSpec `json:"nics,omitempty"`
	// NAT masquerades the VM's traffic through Uplink and turns IPv4 forwarding on. False: the
	// guest reaches only the host.
	NAT bool `json:"nat,omitempty"`
	// Uplink is the host device NAT sends traffic out of (NAT only). Empty: the device of the
	// IPv4 default route.
	Uplink string `json:"uplink,omitempty"`
	// Namespace gives the VM a network namespace of its own, smv-<name>, joined to the host
	// by a veth pair; the TAPs live in it and Firecracker runs inside it. The host reaches the
	// guest at MachineInfo.GuestIP, which the namespace forwards to the first NIC. False: the
	// TAPs are in the namespace of the thread that calls Start.
	Namespace bool `json:"namespace,omitempty"`
	// Pool is the IPv4 range the /30s come from. Zero value: DefaultNetworkPool.
	Pool string `json:"pool,omitempty"`
	// KernelIPArg appends the ip= kernel argument that configures the first NIC to the boot
	// arguments, for guests without fcnet.
	KernelIPArg bool `json:"kernel_ip_arg,omitempty"`
	// MTU of the TAP devices (and the veth pair), 68 to 65535. Zero value: the kernel's
	// default, 1500.
	MTU int `json:"mtu,omitempty"`
}

// NICSpec is one network interface of a managed network.
type NICSpec struct {
	// ID is Firecracker's iface_id: ASCII letters, digits and '_'. Zero value: "eth<N>", N
	// counting on from the spec's Interfaces (eth0, eth1, ... when it has none).
	ID string `json:"id,omitempty"`
	// RxRateLimiter and TxRateLimiter limit received and sent traffic. Zero value: no limit.
	RxRateLimiter *fcapi.RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *fcapi.RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// DefaultNetworkPool is the range managed NICs get their /30 from unless NetworkSpec.Pool
// names another.
const DefaultNetworkPool = netdev.DefaultPool

// MaxNICs is the most NICs a managed network may have.
const MaxNICs = 8

// DriveSpec is a virtio-block drive backed by a file (or block device) on the host.
//
// A writable drive is ephemeral by default: Start stages a private copy in the VM's directory
// (a reflink where the filesystem can, else a sparse copy), the guest writes to the copy, and
// the copy is deleted with the VM. A Persistent drive is used in place and kept. A ReadOnly
// drive is never copied.
type DriveSpec struct {
	// ID is Firecracker's drive ID: ASCII letters, digits and '_'. Zero value: "rootfs" for
	// the root drive, "drive<N>" for the others (N is the drive's index in Drives).
	ID string `json:"id,omitempty"`
	// Path is the backing file. Required.
	Path string `json:"path"`
	// Root makes this the root device: Firecracker adds root=/dev/vda (or PARTUUID) and
	// rw or ro to the kernel command line.
	Root bool `json:"root,omitempty"`
	// ReadOnly exposes the drive read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Persistent uses Path in place for a writable drive: the guest's writes land in it and
	// it is never removed. In JSON, "ephemeral": false says the same.
	Persistent bool `json:"persistent,omitempty"`
	// PartUUID selects the root partition by its PARTUUID (root drive only).
	PartUUID string `json:"partuuid,omitempty"`
	// CacheType is Unsafe or Writeback. Zero value: Firecracker's default, Unsafe.
	CacheType fcapi.CacheType `json:"cache_type,omitempty"`
	// IOEngine is Sync or Async (io_uring). Zero value: Firecracker's default, Sync.
	IOEngine fcapi.IOEngine `json:"io_engine,omitempty"`
	// RateLimiter limits the drive's bandwidth and operations. Zero value: no limit.
	RateLimiter *fcapi.RateLimiter `json:"rate_limiter,omitempty"`
}

// UnmarshalJSON reads a DriveSpec, also accepting "ephemeral": false as the opposite of
// "persistent": true.
func (d *DriveSpec) UnmarshalJSON(b []byte) error {
	type plain DriveSpec
	var v struct {
		plain
		Ephemeral *bool `json:"ephemeral"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v.Ephemeral != nil {
		if *v.Ephemeral && v.Persistent {
			return fmt.Errorf("drive %q: \"ephemeral\": true contradicts \"persistent\": true", v.ID)
		}
		v.Persistent = v.Persistent || !*v.Ephemeral
	}
	*d = DriveSpec(v.plain)
	return nil
}

// Ephemeral reports whether Start stages a private copy of the drive.
func (d DriveSpec) Ephemeral() bool { return !d.ReadOnly && !d.Persistent }

// InterfaceSpec is a network interface backed by a TAP device that already exists and is up.
type InterfaceSpec struct {
	// ID is Firecracker's interface ID: ASCII letters, digits and '_'. Zero value:
	// "eth<N>" (N is the interface's index in Interfaces).
	ID string `json:"id,omitempty"`
	// TAP is the host TAP device's name (at most 15 bytes). Required.
	TAP string `json:"tap"`
	// MAC is the guest's MAC address, such as "06:00:ac:10:00:02". Zero value: the guest
	// picks one.
	MAC string `json:"mac,omitempty"`
	// MTU (68 to 65535) is advertised to the guest; Firecracker v1.16 or newer. Zero value:
	// not advertised.
	MTU int `json:"mtu,omitempty"`
	// RxRateLimiter and TxRateLimiter limit received and sent traffic. Zero value: no limit.
	RxRateLimiter *fcapi.RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *fcapi.RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// VsockSpec is a virtio-vsock device.
type VsockSpec struct {
	// CID is the guest's context ID, 3 or more. Required.
	CID uint32 `json:"cid"`
	// Path is the host-side Unix socket: connect to it and send "CONNECT <port>\n" to reach
	// the guest; guest-initiated connections go to Path_<port>. Zero value: vsock.sock in the
	// VM's directory. Firecracker creates it; Start refuses a path that exists, and the
	// socket is removed with the VM.
	Path string `json:"path,omitempty"`
}

// MMDSSpec configures the microVM metadata service.
type MMDSSpec struct {
	// Version is V1 or V2 (session tokens). Zero value: V2.
	Version fcapi.MMDSVersion `json:"version,omitempty"`
	// Interfaces are the IDs of the interfaces (from MachineSpec.Interfaces) that reach the
	// metadata service. Zero value: all of them.
	Interfaces []string `json:"interfaces,omitempty"`
	// IPv4Address is the service's link-local address. Zero value: Firecracker's default,
	// 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// IMDSCompat always answers in EC2 IMDS text format (Firecracker v1.13 or newer).
	IMDSCompat bool `json:"imds_compat,omitempty"`
	// Data is the JSON the store starts with. Zero value: empty. For a VM with the agent and
	// a managed network, Start adds MMDSNetworkKey to it (see MachineSpec.Agent); fields
	// of that key in Data win over Start's (a JSON merge patch on top), so Data can add
	// "dns" to them, for example.
	Data json.RawMessage `json:"data,omitempty"`
}

// MMDSNetworkKey is where Start puts a guest's network in MMDS for the agent:
// {"smartvm": {"network": {"address": "172.16.0.2/30", "gateway": "172.16.0.1",
// "hostname": NAME, "device": "eth0"}}}, each value a string, NAME the VM's name without the
// '-' it may end in; "dns" (name servers separated by spaces) is written to the guest's
// /etc/resolv.conf when present. The agent, as PID 1 and without an ip= kernel argument,
// reads it from the address the kernel argument smartvm.mmds=ADDR names (Start adds it) and
// applies it.
const MMDSNetworkKey = agentwire.MMDSKey + ".network"

func isJSONObject(b json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(b, &m) == nil && m != nil
}

// agentNeedsMMDS reports whether the agent learns the VM's network from MMDS.
func (s MachineSpec) agentNeedsMMDS() bool {
	return s.Agent && s.Network != nil && !s.Network.KernelIPArg
}

// BalloonSpec is a memory balloon device.
type BalloonSpec struct {
	// AmountMiB is the balloon's initial target size, at most the guest memory.
	AmountMiB int `json:"amount_mib"`
	// DeflateOnOOM lets the guest deflate the balloon under memory pressure.
	DeflateOnOOM bool `json:"deflate_on_oom,omitempty"`
	// StatsPollingIntervalS enables balloon statistics every so many seconds. Zero value: off.
	StatsPollingIntervalS int `json:"stats_polling_interval_s,omitempty"`
}

// EntropySpec is a virtio-rng device.
type EntropySpec struct {
	// RateLimiter limits the entropy handed to the guest. Zero value: no limit.
	RateLimiter *fcapi.RateLimiter `json:"rate_limiter,omitempty"`
}

// validName reports whether s is a VM name: 1 to 64 ASCII letters, digits or '-'. It and
// validResourceID are loops rather than regular expressions: compiled at package
// initialisation, `^[A-Za-z0-9-]{1,64}$` cost every smartvm command about 0.5 ms of start-up.
func validName(s string) bool { return len(s) >= 1 && len(s) <= 64 && onlyWordBytes(s, '-') }

// validVMName reports whether s is a name a VM may have: a valid name that does not start
// with '-' or with the warm jails' prefix (Validate's rules).
func validVMName(s string) bool {
	return validName(s) && s[0] != '-' && !strings.HasPrefix(s, jailer.WarmIDPrefix)
}

// guestHostname is the host name a guest gets from its VM's name (in MMDS, and for a main
// command): the name without the '-' it may end in, which a host name may not (RFC 1123);
// "web-" becomes "web". A VM name starts with a letter or digit, so the result is a host name
// of 1 to 64 bytes.
func guestHostname(vmName string) string { return strings.TrimRight(vmName, "-") }

// validResourceID reports whether s is a drive or interface ID: one or more ASCII letters,
// digits or '_'.
func validResourceID(s string) bool { return s != "" && onlyWordBytes(s, '_') }

// onlyWordBytes reports whether every byte of s is an ASCII letter, a digit or extra.
func onlyWordBytes(s string, extra byte) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == extra) {
			return false
		}
	}
	return true
}

// managedFlags are the firecracker flags Start sets itself.
var managedFlags = []string{"--api-sock", "--id", "--config-file", "--log-path", "--level", "--metrics-path", "--metadata", "--no-api"}

// UsesBaseImage reports whether the spec names a base image instead of a kernel.
func (s MachineSpec) UsesBaseImage() bool {
	return s.BaseImagePreset != "" || s.BaseImageManifestURL != "" || s.BaseImageManifestPath != "" || s.BaseImageOCI != ""
}

// WithDefaults returns a copy of s with every zero-valued field that has a default set to it
// (the name excepted: Start picks that). It does no I/O.
func (s MachineSpec) WithDefaults() MachineSpec {
	if s.BootArgs == "" && !s.UsesBaseImage() {
		s.BootArgs = DefaultBootArgs
	}
	if s.VCPUs == 0 {
		s.VCPUs = DefaultVCPUs
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.LogLevel == "" {
		s.LogLevel = DefaultLogLevel
	}
	if s.BootMode == "" {
		s.BootMode = BootModeAPI
	}
	s.Labels = maps.Clone(s.Labels)
	s.Drives = append([]DriveSpec(nil), s.Drives...)
	for i := range s.Drives {
		if s.Drives[i].ID == "" {
			if s.Drives[i].Root {
				s.Drives[i].ID = "rootfs"
			} else {
				s.Drives[i].ID = "drive" + strconv.Itoa(i)
			}
		}
	}
	s.Interfaces = append([]InterfaceSpec(nil), s.Interfaces...)
	for i := range s.Interfaces {
		if s.Interfaces[i].ID == "" {
			s.Interfaces[i].ID = "eth" + strconv.Itoa(i)
		}
	}
	if s.Network != nil {
		n := *s.Network
		if len(n.NICs) == 0 {
			n.NICs = []NICSpec{{}}
		} else {
			n.NICs = append([]NICSpec(nil), n.NICs...)
		}
		for i := range n.NICs {
			if n.NICs[i].ID == "" {
				n.NICs[i].ID = "eth" + strconv.Itoa(len(s.Interfaces)+i)
			}
		}
		if n.Pool == "" {
			n.Pool = DefaultNetworkPool
		}
		s.Network = &n
	}
	if s.agentNeedsMMDS() && s.MMDS == nil {
		s.MMDS = &MMDSSpec{}
	}
	if s.MMDS != nil {
		m := *s.MMDS
		if m.Version == "" {
			m.Version = fcapi.MMDSv2
		}
		if len(m.Interfaces) == 0 {
			m.Interfaces = s.interfaceIDs()
		}
		s.MMDS = &m
	}
	return s
}

// interfaceIDs lists the IDs of the VM's network interfaces: Interfaces, then the managed
// network's NICs.
func (s MachineSpec) interfaceIDs() []string {
	var ids []string
	for _, ifc := range s.Interfaces {
		ids = append(ids, ifc.ID)
	}
	if s.Network != nil {
		for _, nic := range s.Network.NICs {
			ids = append(ids, nic.ID)
		}
	}
	return ids
}

// Validate checks the spec, with defaults applied, and returns one error per problem, joined
// with errors.Join; nil when the spec is valid. It checks that the files it names exist and
// can be read (and, for persistent writable drives, written). It cannot check socket path
// lengths, which depend on the runtime root: ValidateFor does.
func (s MachineSpec) Validate() error {
	return errors.Join(s.WithDefaults().problems()...)
}

// ValidateFor is Validate plus the checks that depend on the runtime root the VM would run
// in: the API and vsock socket paths must fit in a Unix socket address (MaxSocketPath bytes).
func (s MachineSpec) ValidateFor(runtimeRoot string) error {
	d := s.WithDefaults()
	errs := d.problems()
	name := d.Name
	if name == "" {
		name = "vm-00000000" // the length of a generated name
	}
	dir := filepath.Join(runtimeRoot, "vms", name)
	if p := filepath.Join(dir, "api.sock"); len(p) > MaxSocketPath {
		errs = append(errs, fmt.Errorf("api socket path %s is %d bytes, more than the %d a Unix socket allows: use a shorter runtime root or VM name", p, len(p), MaxSocketPath))
	}
	if d.Vsock != nil && d.Vsock.Path == "" {
		if p := filepath.Join(dir, "vsock.sock"); len(p) > MaxSocketPath {
			errs = append(errs, fmt.Errorf("vsock socket path %s is %d bytes, more than the %d a Unix socket allows: use a shorter runtime root or VM name, or set vsock.path", p, len(p), MaxSocketPath))
		}
	}
	return errors.Join(errs...)
}

// problems lists what is wrong with s, which has its defaults applied.
func (s MachineSpec) problems() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	addErr := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	if s.Jailer != nil {
		errs = append(errs, s.Jailer.problems()...)
	}
	if s.Name != "" && !validName(s.Name) {
		add("name %q: use 1 to 64 ASCII letters, digits or '-'", s.Name)
	} else if strings.HasPrefix(s.Name, "-") {
		add("name %q: a name that starts with '-' would be read as a flag by Firecracker and other tools; start it with a letter or digit", s.Name)
	} else if strings.HasPrefix(s.Name, jailer.WarmIDPrefix) {
		add("name %q: names that start with %q are smartvm's own (warm jails, see Manager.WarmJails); choose another", s.Name, jailer.WarmIDPrefix)
	}
	if i := strings.IndexFunc(s.BootArgs, unicode.IsControl); i >= 0 {
		add("boot_args: control character %q at byte %d: the kernel command line is one line of printable text", s.BootArgs[i], i)
	}

	images := 0
	for _, v := range []string{s.BaseImagePreset, s.BaseImageManifestURL, s.BaseImageManifestPath, s.BaseImageOCI} {
		if v != "" {
			images++
		}
	}
	switch {
	case images > 1:
		add("base image: set only one of base_image_preset, base_image_manifest_url, base_image_manifest_path and base_image_oci")
	case images == 1 && s.Kernel != "":
		add("kernel %s and a base image are both set: a base image brings its own kernel; set one", s.Kernel)
	case images == 0 && s.Kernel == "":
		add("kernel: required (or name a base image)")
	}
	if s.BaseImagePreset != "" && s.BaseImagePreset != "latest" && s.BaseImagePreset != "lts" {
		add("base_image_preset %q: use latest or lts", s.BaseImagePreset)
	}
	if u := s.BaseImageManifestURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		add("base_image_manifest_url %q: use an http or https URL (or base_image_manifest_path for a file)", u)
	}
	if s.BaseImageManifestPath != "" {
		addErr(checkFile("base_image_manifest_path", s.BaseImageManifestPath, false))
	}
	if s.BaseImageOCI != "" {
		if err := (baseimage.Source{OCI: s.BaseImageOCI}).Validate(); err != nil {
			add("base_image_oci: %w", err)
		}
	}
	if s.Kernel != "" {
		addErr(checkFile("kernel", s.Kernel, false))
	}
	if s.Initrd != "" {
		addErr(checkFile("initrd", s.Initrd, false))
	}

	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		add("vcpus %d: use 1 to %d", s.VCPUs, MaxVCPUs)
	}
	if s.MemoryMiB < 1 || s.MemoryMiB > MaxMemoryMiB {
		add("memory_mib %d: use 1 to %d (the value is in MiB)", s.MemoryMiB, MaxMemoryMiB)
	}

	if s.SMT && s.VCPUs > 1 && s.VCPUs%2 == 1 {
		add("vcpus %d: with smt, use 1 or an even number", s.VCPUs)
	}
	switch s.HugePages {
	case "", fcapi.HugePagesNone, fcapi.HugePagesTransparent:
	case fcapi.HugePages2M:
		if s.MemoryMiB%2 != 0 {
			add("memory_mib %d: with 2M huge pages, use a multiple of 2", s.MemoryMiB)
		}
	default:
		add("huge_pages %q: use None, 2M or Transparent", s.HugePages)
	}
	switch s.CPUTemplate {
	case "", fcapi.CPUTemplateNone, fcapi.CPUTemplateC3, fcapi.CPUTemplateT2, fcapi.CPUTemplateT2S,
		fcapi.CPUTemplateT2CL, fcapi.CPUTemplateT2A, fcapi.CPUTemplateV1N1:
	default:
		add("cpu_template %q: use C3, T2, T2S, T2CL, T2A, V1N1 or None", s.CPUTemplate)
	}
	errs = append(errs, labelProblems(s.Labels)...)
	errs = append(errs, s.driveProblems()...)
	errs = append(errs, s.interfaceProblems()...)
	errs = append(errs, s.networkProblems()...)

	if v := s.Vsock; v != nil {
		if v.CID < 3 || v.CID == ^uint32(0) {
			add("vsock cid %d: use 3 or more (0 to 2 are reserved)", v.CID)
		}
		if v.Path != "" {
			if len(v.Path) > MaxSocketPath {
				add("vsock path %s is %d bytes, more than the %d a Unix socket allows", v.Path, len(v.Path), MaxSocketPath)
			}
			if _, err := os.Lstat(v.Path); err == nil {
				add("vsock path %s exists: Firecracker creates the socket and needs the path free", v.Path)
			}
		}
	}
	if m := s.MMDS; m != nil {
		if m.Version != fcapi.MMDSv1 && m.Version != fcapi.MMDSv2 {
			add("mmds version %q: use V1 or V2", m.Version)
		}
		for _, id := range m.Interfaces {
			if !s.hasInterface(id) {
				add("mmds interface %q: no such interface", id)
			}
		}
		if len(m.Interfaces) == 0 {
			add("mmds: needs a network interface for the guest to reach it")
		}
		if m.IPv4Address != "" {
			a, err := netip.ParseAddr(m.IPv4Address)
			if err != nil || !a.Is4() || !a.IsLinkLocalUnicast() {
				add("mmds ipv4_address %q: use a link-local IPv4 address (169.254.x.y)", m.IPv4Address)
			}
		}
		if len(m.Data) > 0 && !json.Valid(m.Data) {
			add("mmds data: not valid JSON")
		} else if len(m.Data) > 0 && s.agentNeedsMMDS() && !isJSONObject(m.Data) {
			add("mmds data: the agent's network goes into MMDS under %q, which needs the data to be a JSON object: make it one, or set network.kernel_ip_arg", agentwire.MMDSKey)
		}
	}
	if b := s.Balloon; b != nil {
		if b.AmountMiB < 0 || b.AmountMiB > s.MemoryMiB {
			add("balloon amount_mib %d: use 0 to the guest memory (%d MiB)", b.AmountMiB, s.MemoryMiB)
		}
		if b.StatsPollingIntervalS < 0 || b.StatsPollingIntervalS > 65535 {
			add("balloon stats_polling_interval_s %d: use 0 to 65535", b.StatsPollingIntervalS)
		}
	}

	switch strings.ToLower(string(s.LogLevel)) {
	case "error", "warning", "warn", "info", "debug", "trace", "off":
	default:
		add("log_level %q: use Error, Warning, Info, Debug, Trace or Off", s.LogLevel)
	}
	if s.BootMode != BootModeAPI && s.BootMode != BootModeConfigFile {
		add("boot_mode %q: use %s or %s", s.BootMode, BootModeAPI, BootModeConfigFile)
	}
	for _, a := range s.ExtraArgs {
		flag, _, _ := strings.Cut(a, "=")
		for _, m := range managedFlags {
			if flag == m {
				add("extra_args: %s is set by smartvm and cannot be given", m)
			}
		}
	}
	return errs
}

// apiPayloadLimit is the API body limit the VM's Firecracker runs with: the value of
// --http-api-max-payload-size in ExtraArgs, else Firecracker's default. The client refuses
// larger bodies before sending them.
func (s MachineSpec) apiPayloadLimit() int {
	const flag = "--http-api-max-payload-size"
	for i, a := range s.ExtraArgs {
		v, ok := strings.CutPrefix(a, flag+"=")
		if !ok && a == flag && i+1 < len(s.ExtraArgs) {
			v, ok = s.ExtraArgs[i+1], true
		}
		if n, err := strconv.Atoi(v); ok && err == nil && n > 0 {
			return n
		}
	}
	return fcapi.DefaultMaxPayload
}

func (s MachineSpec) hasInterface(id string) bool {
	return slices.Contains(s.interfaceIDs(), id)
}

// rootDrive returns the root drive among drives, nil if there is none.
func rootDrive(drives []DriveSpec) *DriveSpec {
	for i := range drives {
		if drives[i].Root {
			return &drives[i]
		}
	}
	return nil
}

func (s MachineSpec) driveProblems() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ids := map[string]bool{}
	writers := map[string]string{} // path -> drive ID, for persistent writable drives
	roots := 0
	for i, d := range s.Drives {
		label := fmt.Sprintf("drive %q", d.ID)
		errs = append(errs, idProblems(label, d.ID, ids)...)
		if d.Root {
			roots++
			if roots == 2 {
				add("%s: a second root drive; only one drive can be the root device", label)
			}
		} else if d.PartUUID != "" {
			add("%s: partuuid applies to the root drive only", label)
		}
		if d.Path == "" {
			add("drive %d (%q): path is required", i, d.ID)
		} else {
			if err := checkFile(label, d.Path, !d.ReadOnly && d.Persistent); err != nil {
				errs = append(errs, err)
			} else if fi, err := os.Stat(d.Path); err == nil && d.Ephemeral() && !fi.Mode().IsRegular() {
				add("%s: %s is a device, and an ephemeral drive is a copy of an image file: set persistent (or read_only) to use the device in place", label, d.Path)
			}
			if !d.ReadOnly && d.Persistent {
				if other, ok := writers[d.Path]; ok {
					add("%s: drive %q already writes to %s; two writers would corrupt it", label, other, d.Path)
				}
				writers[d.Path] = d.ID
			}
		}
		if d.CacheType != "" && d.CacheType != fcapi.CacheUnsafe && d.CacheType != fcapi.CacheWriteback {
			add("%s: cache_type %q: use Unsafe or Writeback", label, d.CacheType)
		}
		if d.IOEngine != "" && d.IOEngine != fcapi.IOEngineSync && d.IOEngine != fcapi.IOEngineAsync {
			add("%s: io_engine %q: use Sync or Async", label, d.IOEngine)
		}
	}
	if s.AgentMain && s.Vsock == nil {
		add("agent_main: the host starts the main process through the agent, over vsock: add a vsock device")
	}
	if s.Agent && !s.UsesBaseImage() {
		switch root := rootDrive(s.Drives); {
		case root == nil:
			add("agent: the agent is installed into the root drive, and there is none")
		case !root.Ephemeral():
			add("agent: drive %q is persistent or read-only; the agent is installed only into an ephemeral (staged) root drive, never into the original", root.ID)
		}
	}
	if s.UsesBaseImage() {
		if roots > 0 {
			add("drives: a base image brings the root drive; remove root from the other drives")
		} else if ids[baseImageRootID] {
			add("drive %q: %q is the base image's root drive; give this drive another ID", baseImageRootID, baseImageRootID)
		}
	}
	return errs
}

func (s MachineSpec) interfaceProblems() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ids, taps, macs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, n := range s.Interfaces {
		label := fmt.Sprintf("interface %q", n.ID)
		errs = append(errs, idProblems(label, n.ID, ids)...)
		switch {
		case n.TAP == "":
			add("%s: tap is required", label)
		case netdev.CheckIfName(n.TAP) != nil:
			add("%s: tap %q is not a valid device name: %w", label, n.TAP, netdev.CheckIfName(n.TAP))
		case taps[n.TAP]:
			add("%s: tap %s is used twice", label, n.TAP)
		}
		taps[n.TAP] = true
		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case err != nil || len(hw) != 6:
				add("%s: mac %q is not a MAC address like 06:00:ac:10:00:02", label, n.MAC)
			case hw[0]&1 == 1:
				add("%s: mac %s is a multicast address; the first byte must be even", label, n.MAC)
			case macs[hw.String()]:
				add("%s: mac %s is used twice", label, n.MAC)
			default:
				macs[hw.String()] = true
			}
		}
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			add("%s: mtu %d: use 68 to 65535", label, n.MTU)
		}
	}
	return errs
}

func (s MachineSpec) networkProblems() []error {
	n := s.Network
	if n == nil {
		return nil
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(n.NICs) > MaxNICs {
		add("network: %d nics; at most %d are supported", len(n.NICs), MaxNICs)
	}
	ids := map[string]bool{}
	for _, ifc := range s.Interfaces {
		ids[ifc.ID] = true
	}
	for _, nic := range n.NICs {
		errs = append(errs, idProblems(fmt.Sprintf("network nic %q", nic.ID), nic.ID, ids)...)
	}
	if p, err := netip.ParsePrefix(n.Pool); err != nil {
		add("network pool %q: use an IPv4 network of /30 or larger, such as %s", n.Pool, DefaultNetworkPool)
	} else if err := netdev.CheckPool(p); err != nil {
		add("network: %w", err)
	} else if need, have := len(n.NICs)+btoi(n.Namespace), 1<<min(30-p.Bits(), 16); need > have {
		add("network pool %s holds %d /30s, and this vm needs %d (one per nic, one more for a namespace): use a larger pool", n.Pool, have, need)
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		add("network mtu %d: use 68 to 65535, or 0 for the default (1500)", n.MTU)
	}
	if n.Uplink != "" {
		if !n.NAT {
			add("network uplink %s: the uplink is used only for NAT; set nat too, or leave the uplink empty", n.Uplink)
		}
		if err := netdev.CheckIfName(n.Uplink); err != nil {
			add("network uplink %q is not a valid device name: %w", n.Uplink, err)
		}
	}
	if n.Namespace && len(s.Interfaces) > 0 {
		add("interfaces: with network.namespace Firecracker runs in the vm's own namespace, where the host's TAP devices are not visible; use network.nics instead")
	}
	return errs
}

// Limits on MachineSpec.Labels.
const (
	MaxLabelKey   = 128
	MaxLabelValue = 4096
)

// labelProblems checks label keys and values; the messages list the labels in key order.
func labelProblems(labels map[string]string) []error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := CheckLabel(k, labels[k]); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// CheckLabel reports what is wrong with the label k=v, as MachineSpec.Validate does.
func CheckLabel(k, v string) error {
	if k == "" || len(k) > MaxLabelKey {
		return fmt.Errorf("label %q: use a key of 1 to %d bytes", k, MaxLabelKey)
	}
	for _, c := range []byte(k) {
		if c <= ' ' || c >= 0x7f || c == '=' || c == ',' {
			return fmt.Errorf("label %q: use printable ASCII without '=', ',' or spaces in keys", k)
		}
	}
	if len(v) > MaxLabelValue {
		return fmt.Errorf("label %q: the value is %d bytes; at most %d are allowed", k, len(v), MaxLabelValue)
	}
	if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
		return fmt.Errorf("label %q: use UTF-8 text without control characters in values", k)
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// idProblems checks a drive or interface ID: Firecracker accepts only ASCII letters, digits
// and '_', and each ID once. It records id in seen.
func idProblems(label, id string, seen map[string]bool) []error {
	var errs []error
	if !validResourceID(id) {
		errs = append(errs, fmt.Errorf("%s: use ASCII letters, digits and '_' for IDs (Firecracker refuses others)", label))
	}
	if seen[id] {
		errs = append(errs, fmt.Errorf("%s: the ID is used twice", label))
	}
	seen[id] = true
	return errs
}

// checkFile checks that path names a regular file (or block device) that can be opened for reading,
// and for writing too when write is set.
func checkFile(what, path string, write bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%s: %s is a directory, not a file", what, path)
	}
	if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
		// Opening a FIFO would block, and Firecracker needs a file it can seek.
		return fmt.Errorf("%s: %s is not a regular file or block device", what, path)
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	f.Close()
	return nil
}
