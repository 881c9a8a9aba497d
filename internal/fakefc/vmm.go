package fakefc

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// vmState is the state GET / reports.
type vmState int

const (
	stateNotStarted vmState = iota
	stateRunning
	statePaused
)

func (s vmState) String() string {
	switch s {
	case stateRunning:
		return "Running"
	case statePaused:
		return "Paused"
	}
	return "Not started"
}

// apiError is a refusal: a 400 (or 413) with {"fault_message": msg}.
type apiError struct {
	status int
	msg    string
	// logged replaces the "Received Error" log line for errors found while parsing.
	logged string
}

func fault(format string, args ...any) *apiError {
	return &apiError{status: 400, msg: fmt.Sprintf(format, args...)}
}

const (
	msgPreBootOnly  = "The requested operation is not supported after starting the microVM."
	msgPostBootOnly = "The requested operation is not supported before starting the microVM."
)

// vm is the emulated VMM: the configuration, the state machine and the guest. Its methods
// run one at a time under the Handler's lock, as Firecracker handles one request at a time.
type vm struct {
	rel      *release
	log      *fcLogger
	metrics  *metrics
	id       string
	stdout   io.Writer
	failBoot bool // fail-start mode
	noCAD    bool // ignore-ctrl-alt-del mode
	// slowSnapshot: slow-snapshot mode
	slowSnapshot bool

	mmdsLimit int
	enablePCI bool
	bootTimer bool // --boot-timer: a Linux guest reports its boot time

	state    vmState
	booted   bool // InstanceStart or a snapshot load succeeded
	bootPath bool // a boot-specific resource was configured (no snapshot load any more)

	boot      *bootSource // the boot source InstanceStart uses
	bootShown *bootSource // what GET /vm/config reports instead, when not nil
	kernel    kernelImage
	machine   machineConfig
	drives    []*driveConfig
	nets      []*netConfig
	pmems     []*pmemConfig
	vsock     *vsockConfig
	vsockDev  *vsockDev
	// vsockForward is Options.VsockForward.
	vsockForward map[uint32]string
	balloon      *balloonConfig
	guestMem     *guestMemory // guest memory of a Uffd-backed restore, kept for the life of the process
	entropy      *entropyConfig
	serial       *serialConfig
	mmdsCfg      *mmdsConfig
	mmdsData     any
	hotplug      *hotplugConfig
	customCPU    bool // a custom CPU template (PUT /cpu-config) is in force

	guest *guest

	// afterResponse runs once the current response has been written: starting the guest,
	// or ending the process after a failed snapshot load.
	afterResponse []func()

	exitOnce sync.Once
	exitCode int
	aborted  bool // a request made it panic (set under the Handler's lock)
	exited   chan struct{}
	onExit   func(code int) // tells the embedding (Main, Server) that the process ended
}

// kernelImage is what PUT /boot-source read of the kernel: Firecracker opens the file then
// and keeps it, so later changes to the path do not matter.
type kernelImage struct {
	header    []byte
	testGuest bool
}

func defaultMachine() machineConfig {
	return machineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "None"}
}

// exitAborted is the exit code of a process that panicked: Firecracker aborts (SIGABRT),
// which a shell reports as 134.
const exitAborted = 134

// exit ends the emulated process with code, once.
func (v *vm) exit(code int) {
	v.exitOnce.Do(func() {
		v.exitCode = code
		switch {
		case code == 0:
			v.log.info(threadMain, "Firecracker exiting successfully. exit_code=0")
		case code == exitAborted:
		case code > 0:
			v.log.err(threadMain, "Firecracker exiting with error. exit_code=%d", code)
		}
		if v.guest != nil {
			v.guest.stop()
		}
		if v.vsockDev != nil {
			v.vsockDev.close()
		}
		close(v.exited)
		if v.onExit != nil {
			v.onExit(code)
		}
	})
}

// panicked ends the emulated process as a panic in Firecracker's VMM does: the message is
// logged, the request that caused it gets no answer, and the process aborts.
func (v *vm) panicked(location, msg string) {
	v.log.err(threadMain, "Firecracker panicked at %s:\n%s", location, msg)
	v.aborted = true
	v.exit(exitAborted)
}

// guestReset is the guest resetting the CPU (reboot=k, Ctrl-Alt-Del): Firecracker stops the
// VMM and exits 0.
func (v *vm) guestReset() {
	v.log.info(threadMain, "Vmm is stopping.")
	v.log.info(threadMain, "Vmm is stopping.")
	v.exit(0)
}

// --- Actions ---

func (v *vm) instanceStart() (any, *apiError) {
	if v.boot == nil {
		return nil, fault("Start microvm error: Cannot start microvm without kernel configuration.")
	}
	if v.failBoot {
		return nil, fault("Start microvm error: Could not access KVM: Error creating KVM object: Permission denied (os error 13) " +
			"Make sure the user launching the firecracker process is configured on the /dev/kvm file's ACL.")
	}
	if msg := v.checkKernel(); msg != "" {
		return nil, fault("%s", msg)
	}
	out := v.stdout
	if v.serial != nil && v.serial.SerialOutPath != nil {
		if f, err := openTarget(*v.serial.SerialOutPath, true); err == nil {
			out = f
		} else {
			out = io.Discard
		}
	}
	if v.rel.atLeast(13) {
		v.log.info(threadMain, "Artificially kick devices")
	} else {
		v.log.info(threadMain, "Artificially kick devices.")
	}
	if v.rel.atLeast(10) {
		v.log.info(threadVCPU, "Received a VcpuEvent::Resume message with immediate_exit enabled. immediate_exit was disabled before proceeding")
	}
	v.booted, v.state = true, stateRunning
	v.guest = newGuest(v, out, guestSpec{testGuest: v.kernel.testGuest, cmdline: v.cmdline()})
	if v.vsockDev != nil {
		v.vsockDev.setGuest(v.guest)
	}
	v.afterResponse = append(v.afterResponse, v.guest.start)
	return nil, nil
}

// vsockDevice is the vsock device, nil without one. It is set before the guest starts.
func (v *vm) vsockDevice() *vsockDev { return v.vsockDev }

// cmdline is the boot_args, or Firecracker's default command line.
func (v *vm) cmdline() string {
	if v.boot.BootArgs != nil {
		return *v.boot.BootArgs
	}
	return "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"
}

// checkKernel checks the kernel as Firecracker's ELF loader does at InstanceStart.
func (v *vm) checkKernel() string {
	h := v.kernel.header
	detail := ""
	switch {
	case len(h) < 64:
		detail = "Unable to read elf header"
	case !bytes.Equal(h[:4], []byte("\x7fELF")):
		detail = "Invalid Elf magic number"
	case binary.LittleEndian.Uint64(h[24:32]) < 0x100000:
		detail = "Invalid entry address"
	default:
		return ""
	}
	if !v.rel.atLeast(12) {
		return "Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: " +
			"Kernel Loader: failed to load ELF kernel image"
	}
	return "Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration " +
		"or invalid kernel image: Kernel Loader: failed to load ELF kernel image: Kernel Loader: " + detail
}

func (v *vm) sendCtrlAltDel() (any, *apiError) {
	if !v.noCAD {
		// The guest sees the keys once the response is out: it may reset at once.
		v.afterResponse = append(v.afterResponse, v.guest.ctrlAltDel)
	}
	return nil, nil
}

func (v *vm) flushMetrics() (any, *apiError) {
	v.metrics.flush(v)
	return nil, nil
}

func (v *vm) patchVM(b vmBody) (any, *apiError) {
	start := time.Now()
	if b.State == "Paused" {
		if v.state == stateRunning {
			v.guest.pause()
			v.state = statePaused
		}
		us := time.Since(start).Microseconds()
		v.log.info(threadMain, "'pause vm' VMM action took %d us.", us)
		v.metrics.pauseUS = us
		return nil, nil
	}
	v.log.info(threadMain, "Artificially kick devices")
	if v.state == statePaused {
		v.state = stateRunning
		v.afterResponse = append(v.afterResponse, v.guest.resume)
	}
	us := time.Since(start).Microseconds()
	v.log.info(threadMain, "'resume vm' VMM action took %d us.", us)
	v.metrics.resumeUS = us
	return nil, nil
}

// --- Reading state ---

func (v *vm) instanceInfo() any {
	return jobj{{"id", v.id}, {"state", v.state.String()}, {"vmm_version", v.rel.version}, {"app_name", "Firecracker"}}
}

func (v *vm) versionInfo() any { return jobj{{"firecracker_version", v.rel.version}} }

func (v *vm) machineOut() jobj {
	m := v.machine
	o := jobj{{"vcpu_count", m.VcpuCount}, {"mem_size_mib", m.MemSizeMib}, {"smt", m.Smt}}
	switch {
	case m.CPUTemplate != nil:
		o = o.add("cpu_template", *m.CPUTemplate)
	case v.customCPU && v.rel.legacyErrors():
		// v1.7.0 reports a custom template as "None"; v1.14.2 leaves the field out.
		o = o.add("cpu_template", "None")
	}
	return o.add("track_dirty_pages", m.TrackDirtyPages).add("huge_pages", m.HugePages)
}

func tokenBucketOut(b *tokenBucket) any {
	if b == nil || b.Size == 0 || b.RefillTime == 0 {
		return nil
	}
	return jobj{{"size", b.Size}, {"one_time_burst", orNull(b.OneTimeBurst)}, {"refill_time", b.RefillTime}}
}

func rateLimiterOut(r *rateLimiter) any {
	if r == nil {
		return nil
	}
	bw, ops := tokenBucketOut(r.Bandwidth), tokenBucketOut(r.Ops)
	if bw == nil && ops == nil {
		return nil
	}
	return jobj{{"bandwidth", bw}, {"ops", ops}}
}

func (v *vm) balloonOut() jobj {
	b := v.balloon
	o := jobj{{"amount_mib", b.AmountMib}, {"deflate_on_oom", b.DeflateOnOOM}, {"stats_polling_interval_s", b.StatsPollingIntervalS}}
	if v.rel.atLeast(14) {
		o = o.add("free_page_hinting", b.FreePageHinting).add("free_page_reporting", b.FreePageReporting)
	}
	return o
}

// vmConfig is GET /vm/config: the configuration in --config-file form.
func (v *vm) vmConfig() any {
	var balloon any
	if v.balloon != nil {
		balloon = v.balloonOut()
	}
	drives := []any{}
	for _, d := range v.drives {
		ro := d.IsReadOnly != nil && *d.IsReadOnly
		engine := "Sync"
		if d.IoEngine != nil {
			engine = *d.IoEngine
		}
		cache := d.CacheType
		if cache == "" {
			cache = "Unsafe"
		}
		drives = append(drives, jobj{{"drive_id", d.DriveID}, {"partuuid", orNull(d.Partuuid)},
			{"is_root_device", d.IsRootDevice}, {"cache_type", cache}, {"is_read_only", ro},
			{"path_on_host", orNull(d.PathOnHost)}, {"rate_limiter", rateLimiterOut(d.RateLimiter)},
			{"io_engine", engine}, {"socket", orNull(d.Socket)}})
	}
	boot := jobj{{"kernel_image_path", ""}, {"initrd_path", nil}, {"boot_args", nil}}
	// A restored VM reports its boot source too (v1.7.0 and v1.14.2 alike).
	if b := cmp.Or(v.bootShown, v.boot); b != nil {
		boot = jobj{{"kernel_image_path", b.KernelImagePath}, {"initrd_path", orNull(b.InitrdPath)},
			{"boot_args", orNull(b.BootArgs)}}
	}
	var mmds any
	if v.mmdsCfg != nil {
		c := v.mmdsCfg
		ver, ip := "V1", "169.254.169.254"
		if c.Version != nil {
			ver = *c.Version
		}
		if c.IPv4Address != nil {
			ip = *c.IPv4Address
		}
		o := jobj{{"version", ver}, {"network_interfaces", c.NetworkInterfaces}, {"ipv4_address", ip}}
		if v.rel.atLeast(13) {
			o = o.add("imds_compat", c.ImdsCompat != nil && *c.ImdsCompat)
		}
		mmds = o
	}
	nets := []any{}
	for _, n := range v.nets {
		var mac any
		if n.GuestMAC != nil {
			mac = strings.ToLower(*n.GuestMAC)
		}
		o := jobj{{"iface_id", n.IfaceID}, {"host_dev_name", n.HostDevName}, {"guest_mac", mac}}
		if v.rel.atLeast(16) {
			o = o.add("mtu", orNull(n.MTU))
		}
		nets = append(nets, o.add("rx_rate_limiter", rateLimiterOut(n.RxRateLimiter)).add("tx_rate_limiter", rateLimiterOut(n.TxRateLimiter)))
	}
	var vsock, entropy any
	if v.vsock != nil {
		vsock = jobj{{"guest_cid", v.vsock.GuestCID}, {"uds_path", v.vsock.UDSPath}}
	}
	if v.entropy != nil {
		entropy = jobj{{"rate_limiter", rateLimiterOut(v.entropy.RateLimiter)}}
	}
	out := jobj{{"balloon", balloon}, {"drives", drives}, {"boot-source", boot}, {"cpu-config", nil}, {"logger", nil},
		{"machine-config", v.machineOut()}, {"metrics", nil}, {"mmds-config", mmds}, {"network-interfaces", nets},
		{"vsock", vsock}, {"entropy", entropy}}
	if v.rel.atLeast(14) {
		pmems := []any{}
		for _, p := range v.pmems {
			o := jobj{{"id", p.ID}, {"path_on_host", p.PathOnHost}, {"root_device", p.RootDevice}, {"read_only", p.ReadOnly}}
			if v.rel.atLeast(16) {
				o = o.add("rate_limiter", rateLimiterOut(p.RateLimiter))
			}
			pmems = append(pmems, o)
		}
		var hp any
		if v.hotplug != nil {
			hp = jobj{{"total_size_mib", v.hotplug.TotalSizeMib}, {"block_size_mib", *v.hotplug.BlockSizeMib},
				{"slot_size_mib", *v.hotplug.SlotSizeMib}}
		}
		out = out.add("pmem", pmems).add("memory-hotplug", hp)
	}
	return out
}

// readKernel reads what InstanceStart will check of a kernel, and whether it is the
// project's test guest.
func readKernel(path string) (kernelImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return kernelImage{}, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(f, head)
	img := kernelImage{header: head[:n]}
	// The test guest is a few KiB; a Linux kernel is megabytes.
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < 1<<20 {
		if _, err := f.Seek(0, io.SeekStart); err == nil {
			if all, err := io.ReadAll(f); err == nil {
				img.testGuest = bytes.Contains(all, []byte(testguest.HelloLine))
			}
		}
	}
	return img, nil
}
