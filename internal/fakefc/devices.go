package fakefc

import (
	"encoding/json"
	"errors"
	"math/bits"
	"net"
	"os"
	"slices"

	"github.com/smartvm/smartvm/internal/mergepatch"
)

// The configuration endpoints. Each mimics the checks Firecracker makes and its messages.

func (v *vm) putBootSource(b bootSource) (any, *apiError) {
	v.bootPath = true
	if v.rel.legacyErrors() {
		// Before v1.10 GET /vm/config reports the last request even when it failed; the boot
		// source InstanceStart uses is still the last one that succeeded.
		v.bootShown = &b
	}
	img, err := readKernel(b.KernelImagePath)
	if err != nil {
		return nil, fault("Boot source error: The kernel file cannot be opened: %s", osError(err))
	}
	if b.InitrdPath != nil {
		f, err := os.Open(*b.InitrdPath)
		if err != nil {
			return nil, fault("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", osError(err))
		}
		_ = f.Close()
	}
	v.boot, v.kernel = &b, img
	return nil, nil
}

const msgVCPUs = "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."

func (v *vm) checkMachine(m machineConfig) *apiError {
	if m.VcpuCount == 0 || m.VcpuCount > 32 || (m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1) {
		return fault(msgVCPUs)
	}
	if m.MemSizeMib == 0 || (m.HugePages != "None" && m.MemSizeMib%2 != 0) {
		return fault("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	}
	return nil
}

// cpuTemplate applies the cpu_template of a machine-config request to the template in force:
// absent keeps it, "None" removes it (a custom one too), a static one replaces it. It returns
// the static template and whether a custom template (PUT /cpu-config) stays in force.
func (v *vm) cpuTemplate(req *string) (*string, bool) {
	switch {
	case req == nil:
		return v.machine.CPUTemplate, v.customCPU
	case *req == "None":
		return nil, false
	}
	return req, false
}

func (v *vm) putMachine(m machineConfig) (any, *apiError) {
	v.bootPath = true
	if m.HugePages == "" {
		m.HugePages = "None"
	}
	var custom bool
	m.CPUTemplate, custom = v.cpuTemplate(m.CPUTemplate)
	if err := v.checkMachine(m); err != nil {
		return nil, err
	}
	v.machine, v.customCPU = m, custom
	return nil, nil
}

func (v *vm) patchMachine(u machineConfigUpdate) (any, *apiError) {
	v.bootPath = true
	m := v.machine
	if u.VcpuCount != nil {
		m.VcpuCount = *u.VcpuCount
	}
	if u.MemSizeMib != nil {
		m.MemSizeMib = *u.MemSizeMib
	}
	if u.Smt != nil {
		m.Smt = *u.Smt
	}
	var custom bool
	m.CPUTemplate, custom = v.cpuTemplate(u.CPUTemplate)
	if u.TrackDirtyPages != nil {
		m.TrackDirtyPages = *u.TrackDirtyPages
	}
	if u.HugePages != nil {
		m.HugePages = *u.HugePages
	}
	if err := v.checkMachine(m); err != nil {
		return nil, err
	}
	v.machine, v.customCPU = m, custom
	return nil, nil
}

// putCPUConfig sets a custom CPU template, which replaces a static one.
func (v *vm) putCPUConfig() (any, *apiError) {
	v.machine.CPUTemplate, v.customCPU = nil, true
	return nil, nil
}

func (v *vm) putDrive(d driveConfig) (any, *apiError) {
	v.bootPath = true
	legacy := v.rel.legacyErrors()
	if (d.PathOnHost == nil) == (d.Socket == nil) {
		if legacy {
			return nil, fault("Drive config error: Unable to create the virtio block device: InvalidBlockConfig")
		}
		return nil, fault("Drive config error: Unable to create the virtio block device: Invalid block config.")
	}
	if d.IsRootDevice {
		for _, o := range v.drives {
			if o.IsRootDevice && o.DriveID != d.DriveID {
				return nil, fault("Drive config error: A root block device already exists!")
			}
		}
		for _, p := range v.pmems {
			if p.RootDevice {
				return nil, fault("Drive config error: A root block device already exists!")
			}
		}
	}
	if d.PathOnHost != nil {
		flags := os.O_RDWR
		if d.IsReadOnly != nil && *d.IsReadOnly {
			flags = os.O_RDONLY
		}
		f, err := os.OpenFile(*d.PathOnHost, flags, 0)
		if err != nil {
			if legacy {
				return nil, fault("Drive config error: Unable to create the virtio block device: VirtioBackend(BackingFile(%s, %s))",
					osErrorDebug(err), rustDebugString(*d.PathOnHost))
			}
			return nil, fault("Drive config error: Unable to create the virtio block device: Virtio backend error: "+
				"Error manipulating the backing file: %s %s", osError(err), *d.PathOnHost)
		}
		if st, err := f.Stat(); err == nil && st.Size()%512 != 0 {
			v.log.warn(threadMain, "Disk size %d is not a multiple of sector size 512; the remainder will not be visible to the guest.", st.Size())
		}
		_ = f.Close()
	}
	if d.CacheType == "" {
		d.CacheType = "Unsafe"
	}
	for i, o := range v.drives {
		if o.DriveID == d.DriveID {
			v.drives[i] = &d
			v.sortDrives()
			return nil, nil
		}
	}
	v.drives = append(v.drives, &d)
	v.sortDrives()
	return nil, nil
}

// sortDrives keeps the root device first, as Firecracker attaches it as /dev/vda.
func (v *vm) sortDrives() {
	slices.SortStableFunc(v.drives, func(a, b *driveConfig) int {
		switch {
		case a.IsRootDevice == b.IsRootDevice:
			return 0
		case a.IsRootDevice:
			return -1
		}
		return 1
	})
}

func (v *vm) patchDrive(u driveUpdate) (any, *apiError) {
	var d *driveConfig
	for _, o := range v.drives {
		if o.DriveID == u.DriveID {
			d = o
		}
	}
	if d == nil {
		return nil, fault("Drive config error: Unable to patch the block device: %s Please verify the request arguments.", v.notFound())
	}
	if u.PathOnHost == nil && u.RateLimiter == nil {
		origin := "Block"
		if !v.rel.atLeast(13) {
			origin = "Device manager error"
		}
		return nil, fault("Drive config error: Unable to patch the block device: %s: Running method expected different backend. Please verify the request arguments.", origin)
	}
	if u.PathOnHost != nil {
		f, err := os.Open(*u.PathOnHost)
		if err != nil {
			return nil, fault("Drive config error: Unable to patch the block device: Virtio backend error: Error manipulating the backing file: %s %s Please verify the request arguments.",
				osError(err), *u.PathOnHost)
		}
		_ = f.Close()
		d.PathOnHost = u.PathOnHost
	}
	if u.RateLimiter != nil {
		d.RateLimiter = mergeRateLimiter(d.RateLimiter, u.RateLimiter)
	}
	return nil, nil
}

// mergeRateLimiter applies a rate limiter update: a bucket not mentioned stays unchanged.
func mergeRateLimiter(old, upd *rateLimiter) *rateLimiter {
	out := rateLimiter{}
	if old != nil {
		out = *old
	}
	if upd.Bandwidth != nil {
		out.Bandwidth = upd.Bandwidth
	}
	if upd.Ops != nil {
		out.Ops = upd.Ops
	}
	return &out
}

const maxIfName = 15 // IFNAMSIZ - 1

func (v *vm) putNet(n netConfig) (any, *apiError) {
	v.bootPath = true
	if len(n.HostDevName) > maxIfName || n.HostDevName == "" {
		return nil, fault("Network config error: Could not create the network device: Open tap device failed: Invalid interface name")
	}
	for _, o := range v.nets {
		if o.IfaceID == n.IfaceID {
			continue
		}
		if n.GuestMAC != nil && o.GuestMAC != nil && equalMAC(*n.GuestMAC, *o.GuestMAC) {
			mac, _ := parseMAC(*n.GuestMAC)
			return nil, fault("Network config error: The MAC address is already in use: %02x:%02x:%02x:%02x:%02x:%02x",
				mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])
		}
		if o.HostDevName == n.HostDevName {
			return nil, fault("Network config error: Could not create the network device: Open tap device failed: "+
				"Error while creating ifreq structure: Resource busy (os error 16). Invalid TUN/TAP Backend provided by %s. "+
				"Check our documentation on setting up the network devices.", n.HostDevName)
		}
	}
	for i, o := range v.nets {
		if o.IfaceID == n.IfaceID {
			v.nets[i] = &n
			return nil, nil
		}
	}
	v.nets = append(v.nets, &n)
	return nil, nil
}

func equalMAC(a, b string) bool {
	ma, errA := parseMAC(a)
	mb, errB := parseMAC(b)
	return errA == nil && errB == nil && ma == mb
}

func (v *vm) patchNet(u netUpdate) (any, *apiError) {
	for _, n := range v.nets {
		if n.IfaceID == u.IfaceID {
			if u.RxRateLimiter != nil {
				n.RxRateLimiter = mergeRateLimiter(n.RxRateLimiter, u.RxRateLimiter)
			}
			if u.TxRateLimiter != nil {
				n.TxRateLimiter = mergeRateLimiter(n.TxRateLimiter, u.TxRateLimiter)
			}
			return nil, nil
		}
	}
	return nil, fault("Network config error: Unable to update the net device: %s", v.notFound())
}

func (v *vm) putPmem(p pmemConfig) (any, *apiError) {
	v.bootPath = true
	if p.RootDevice {
		for _, d := range v.drives {
			if d.IsRootDevice {
				return nil, fault("Pmem device error: Attempt to add pmem as a root device while the root device defined as a block device")
			}
		}
		for _, o := range v.pmems {
			if o.RootDevice && o.ID != p.ID {
				return nil, fault("Pmem device error: A root pmem device already exists!")
			}
		}
	}
	flags := os.O_RDWR
	if p.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(p.PathOnHost, flags, 0)
	if err != nil {
		return nil, fault("Pmem device error: Unable to create the virtio-pmem device: Error accessing backing file: %s", osError(err))
	}
	_ = f.Close()
	for i, o := range v.pmems {
		if o.ID == p.ID {
			v.pmems[i] = &p
			return nil, nil
		}
	}
	v.pmems = append(v.pmems, &p)
	return nil, nil
}

func (v *vm) patchPmem(u pmemUpdate) (any, *apiError) {
	for _, p := range v.pmems {
		if p.ID == u.ID {
			if u.RateLimiter != nil {
				p.RateLimiter = mergeRateLimiter(p.RateLimiter, u.RateLimiter)
			}
			return nil, nil
		}
	}
	return nil, fault("Pmem device error: %s", v.notFound())
}

func (v *vm) putVsock(c vsockConfig) (any, *apiError) {
	v.bootPath = true
	// Replacing the device drops the old one, whose backend removes its socket.
	if v.vsockDev != nil {
		v.vsockDev.close()
		_ = os.Remove(v.vsock.UDSPath)
		v.vsockDev, v.vsock = nil, nil
	}
	ln, err := listenUnixKeep(c.UDSPath)
	if err != nil {
		if v.rel.legacyErrors() {
			return nil, fault("Vsock config error: Cannot create backend for vsock device: UnixBind(%s)", osErrorDebug(err))
		}
		return nil, fault("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: %s", osError(err))
	}
	v.vsock, v.vsockDev = &c, newVsockDev(c.UDSPath, ln, v.vsockForward)
	return nil, nil
}

// listenUnixKeep binds and listens on path; closing the listener leaves the file, as
// Firecracker never removes its sockets.
func listenUnixKeep(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			return nil, oe.Err
		}
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

func (v *vm) putBalloon(b balloonConfig) (any, *apiError) {
	v.bootPath = true
	if uint64(b.AmountMib) > v.machine.MemSizeMib {
		return nil, fault("Balloon config error: Amount of pages requested is too large.")
	}
	v.balloon = &b
	return nil, nil
}

func (v *vm) getBalloon() (any, *apiError) {
	if v.balloon == nil {
		if v.booted {
			return nil, v.balloonErr("DeviceNotFound", "Internal VMM error: "+v.notFound())
		}
		return nil, fault("Balloon config error: No balloon device found.")
	}
	return v.balloonOut(), nil
}

// notFound is how the release words a device missing at run time.
func (v *vm) notFound() string {
	if v.rel.atLeast(13) {
		return "Failed perform action on device: Device not found"
	}
	return "Device manager error: Failed to find the device on the bus."
}

// balloonErr is a balloon failure after boot. Before v1.10 every such failure reads "Balloon
// config error: Error creating the balloon device: <variant>"; later releases word it msg.
func (v *vm) balloonErr(variant, msg string) *apiError {
	if v.rel.legacyErrors() {
		return fault("Balloon config error: Error creating the balloon device: %s", variant)
	}
	return fault("%s", msg)
}

// The guests the fake emulates have no virtio-balloon driver, so the device never activates,
// as with the project's test guest under a real Firecracker.

const msgBalloonInactive = "Balloon update error: Balloon: Device not activated yet."

func (v *vm) balloonStats() (any, *apiError) {
	if v.balloon == nil {
		return nil, v.balloonErr("DeviceNotFound", "Internal VMM error: "+v.notFound())
	}
	if v.balloon.StatsPollingIntervalS == 0 {
		return nil, v.balloonErr("StatisticsDisabled", "Internal VMM error: Balloon: Received stats query when stats are disabled.")
	}
	target := uint64(v.balloon.AmountMib)
	return jobj{{"target_pages", target * 256}, {"actual_pages", 0}, {"target_mib", target}, {"actual_mib", 0}}, nil
}

func (v *vm) patchBalloon(u balloonUpdate) (any, *apiError) {
	if v.balloon == nil {
		return nil, v.balloonErr("DeviceNotFound", "Balloon update error: "+v.notFound())
	}
	if v.rel.legacyErrors() && uint64(u.AmountMib) > v.machine.MemSizeMib {
		// Checked before activation only by the old releases.
		return nil, fault("Balloon config error: Error creating the balloon device: TooManyPagesRequested")
	}
	return nil, v.balloonErr("DeviceNotActive", msgBalloonInactive)
}

// patchBalloonStats changes the statistics interval, which works on a device the guest has
// not activated, except before v1.10: v1.7.0 panics on a change between two non-zero
// intervals there.
func (v *vm) patchBalloonStats(u balloonStatsUpdate) (any, *apiError) {
	if v.balloon == nil {
		return nil, v.balloonErr("DeviceNotFound", "Balloon update error: "+v.notFound())
	}
	switch {
	case u.StatsPollingIntervalS == v.balloon.StatsPollingIntervalS:
	case u.StatsPollingIntervalS == 0 || v.balloon.StatsPollingIntervalS == 0:
		return nil, v.balloonErr("StatisticsStateChange", "Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation.")
	case v.rel.legacyErrors():
		v.panicked("src/vmm/src/devices/virtio/balloon/device.rs:457:43", "called `Option::unwrap()` on a `None` value")
	default:
		v.balloon.StatsPollingIntervalS = u.StatsPollingIntervalS
	}
	return nil, nil
}

// checkHinting is the check every free page hinting call makes first.
func (v *vm) checkHinting() *apiError {
	if v.balloon == nil {
		return fault("Balloon update error: %s", v.notFound())
	}
	if !v.balloon.FreePageHinting {
		return fault("Balloon update error: Balloon: Attempting to use hinting when not enabled")
	}
	return nil
}

// balloonHinting is PATCH /balloon/hinting/start or stop: the device must be active.
func (v *vm) balloonHinting() (any, *apiError) {
	if err := v.checkHinting(); err != nil {
		return nil, err
	}
	return nil, fault(msgBalloonInactive)
}

// balloonHintingStatus is GET /balloon/hinting/status: no command yet on either side.
func (v *vm) balloonHintingStatus() (any, *apiError) {
	if err := v.checkHinting(); err != nil {
		return nil, err
	}
	return jobj{{"host_cmd", 0}, {"guest_cmd", nil}}, nil
}

func (v *vm) putEntropy(e entropyConfig) (any, *apiError) {
	v.bootPath = true
	v.entropy = &e
	return nil, nil
}

func (v *vm) putSerial(s serialConfig) (any, *apiError) {
	v.serial = &s
	return nil, nil
}

func (v *vm) putMmdsConfig(c mmdsConfig) (any, *apiError) {
	v.bootPath = true
	if c.IPv4Address != nil {
		ip := net.ParseIP(*c.IPv4Address).To4()
		if ip == nil || ip[0] != 169 || ip[1] != 254 {
			return nil, fault("MMMDS config error: The MMDS IPv4 address is not link local.")
		}
	}
	if len(c.NetworkInterfaces) == 0 {
		return nil, fault("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		if !slices.ContainsFunc(v.nets, func(n *netConfig) bool { return n.IfaceID == id }) {
			return nil, fault("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	v.mmdsCfg = &c
	return nil, nil
}

// The MMDS data store exists before and after boot, with or without PUT /mmds/config.

func (v *vm) getMmds() (any, *apiError) {
	if v.mmdsData == nil {
		return json.RawMessage("{}"), nil
	}
	return v.mmdsData, nil
}

func (v *vm) putMmds(data any) (any, *apiError) {
	if err := v.checkMmdsSize(data); err != nil {
		return nil, err
	}
	v.mmdsData = data
	return nil, nil
}

func (v *vm) patchMmds(patch any) (any, *apiError) {
	merged := mergepatch.Apply(v.mmdsData, patch)
	if err := v.checkMmdsSize(merged); err != nil {
		return nil, err
	}
	v.mmdsData = merged
	return nil, nil
}

func (v *vm) checkMmdsSize(data any) *apiError {
	b, _ := marshal(data)
	if len(b) > v.mmdsLimit {
		return &apiError{status: 413, msg: "MMDS limit exceeded error: The MMDS patch request doesn't fit."}
	}
	return nil
}

func (v *vm) putHotplug(c hotplugConfig) (any, *apiError) {
	v.bootPath = true
	if c.BlockSizeMib == nil {
		two := uint64(2)
		c.BlockSizeMib = &two
	}
	if c.SlotSizeMib == nil {
		slot := uint64(128)
		c.SlotSizeMib = &slot
	}
	block, slot := *c.BlockSizeMib, *c.SlotSizeMib
	switch {
	case block < 2:
		return nil, fault("Memory hotplug config error: Block size must not be lower than 2 MiB")
	case bits.OnesCount64(block) != 1:
		return nil, fault("Memory hotplug config error: Block size must be a power of 2")
	case slot < 128:
		return nil, fault("Memory hotplug config error: Slot size must not be lower than 128 MiB")
	case slot%block != 0:
		return nil, fault("Memory hotplug config error: Slot size must be a multiple of block size (%d MiB)", block)
	case c.TotalSizeMib < slot:
		return nil, fault("Memory hotplug config error: Total size must not be lower than slot size (%d MiB)", slot)
	case c.TotalSizeMib%slot != 0:
		return nil, fault("Memory hotplug config error: Total size must be a multiple of slot size (%d MiB)", slot)
	}
	v.hotplug = &c
	return nil, nil
}

func (v *vm) getHotplug() (any, *apiError) {
	if v.hotplug == nil {
		return nil, fault("Internal VMM error: %s", v.notFound())
	}
	h := v.hotplug
	return jobj{{"total_size_mib", h.TotalSizeMib}, {"slot_size_mib", *h.SlotSizeMib}, {"block_size_mib", *h.BlockSizeMib},
		{"plugged_size_mib", 0}, {"requested_size_mib", 0}}, nil
}

func (v *vm) patchHotplug(hotplugUpdate) (any, *apiError) {
	if v.hotplug == nil {
		return nil, fault("Memory hotplug update error: %s", v.notFound())
	}
	return nil, fault("Memory hotplug update error: Failed to create memory hotplug device: Device is not active")
}

func (v *vm) putLogger(c loggerConfig, log *fcLogger) (any, *apiError) {
	if err := log.configure(c, v.rel.atLeast(14)); err != nil {
		return nil, fault("Logger error: Failed to open target file: %s", osError(err))
	}
	return nil, nil
}

func (v *vm) putMetrics(c metricsConfig) (any, *apiError) {
	if v.metrics.configured() {
		return nil, fault("Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
	}
	if err := v.metrics.open(c.MetricsPath, v.rel.atLeast(14)); err != nil {
		return nil, fault("Metrics error: Cannot initialize the metrics system due to bad user input: %s", osError(err))
	}
	return nil, nil
}
