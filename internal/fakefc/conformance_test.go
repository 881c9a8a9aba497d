package fakefc

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm/internal/testguest"
)

// The scenarios. Each states what a real Firecracker does (checked by the TestReal tests)
// so that the fake, which must do the same, is held to it in the default test run.

type scenario struct {
	name string
	run  func(r *run)
}

var scenarios = []scenario{
	{"info", scInfo},
	{"states", scStates},
	{"pre-boot refusals", scPreBootRefusals},
	{"post-boot refusals", scPostBootRefusals},
	{"body checks", scBodyChecks},
	{"http errors", scHTTPErrors},
	{"device checks", scDeviceChecks},
	{"templates and boot source", scTemplatesBootSource},
	{"inactive balloon", scInactiveBalloon},
	{"kernel checks", scKernelChecks},
	{"hello exits", scHello},
	{"halt ignores ctrl-alt-del", scHalt},
	{"counter pauses", scCounter},
	{"vsock", scVsock},
	{"snapshot", scSnapshot},
	{"snapshot resume_vm", scSnapshotResume},
	{"fresh-process rule", scFreshProcess},
	{"failed load exits", scFailedLoad},
	{"load reopens drives", scLoadReopensDrives},
	{"leftover socket", scLeftoverSocket},
	{"sigterm", scSigterm},
	{"command line", scCommandLine},
	{"log and metrics files", scLogMetrics},
	{"config file", scConfigFile},
	{"connections", scConnections},
	{"limits", scLimits},
}

// runScenarios runs every scenario against tg.
func runScenarios(t *testing.T, tg func(t *testing.T) target) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(newRun(t, tg(t)))
		})
	}
}

func TestConformance(t *testing.T) {
	for _, v := range []string{DefaultVersion, "1.7.0"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			runScenarios(t, func(t *testing.T) target { return fakeTarget(t, v) })
		})
	}
}

// TestRealConformance runs every scenario against the real Firecracker named by
// SMARTVM_FIRECRACKER_BIN, then against the fake mimicking the same release, and requires
// the two transcripts to match.
func TestRealConformance(t *testing.T) {
	real := realTarget(t)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			rr := newRun(t, real)
			t.Run("real", func(t *testing.T) { rr.t = t; sc.run(rr) })
			fr := newRun(t, fakeTarget(t, real.version))
			t.Run("fake", func(t *testing.T) { fr.t = t; sc.run(fr) })
			if d := cmp.Diff(rr.transcript(), fr.transcript()); d != "" {
				t.Errorf("the fake's transcript differs from Firecracker v%s's (-real +fake):\n%s", real.version, d)
			}
		})
	}
}

const (
	msgBefore = "The requested operation is not supported before starting the microVM."
	msgAfter  = "The requested operation is not supported after starting the microVM."
)

func defaultMachineJSON() string {
	return `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`
}

func scInfo(r *run) {
	p := r.start("fc")
	p.state("Not started")
	p.expect("GET", "/version", "", 200, fmt.Sprintf(`{"firecracker_version":%q}`, r.tg.version))
	p.expect("GET", "/machine-config", "", 200, defaultMachineJSON())
	tail := ""
	if r.tg.minor >= 14 {
		tail = `,"pmem":[],"memory-hotplug":null`
	}
	p.expect("GET", "/vm/config", "", 200, `{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},`+
		`"cpu-config":null,"logger":null,"machine-config":`+defaultMachineJSON()+`,"metrics":null,"mmds-config":null,`+
		`"network-interfaces":[],"vsock":null,"entropy":null`+tail+`}`)
	p.expect("GET", "/mmds", "", 200, "{}")
	p.refused("GET", "/balloon", "", "Balloon config error: No balloon device found.")
	disk := r.path("disk.img")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o644); err != nil {
		r.t.Fatal(err)
	}
	p.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":true}`)
	p.ok("PATCH", "/machine-config", `{"vcpu_count":1}`)
	p.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0"}`, r.kernel))
	p.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":true,`+
		`"rate_limiter":{"bandwidth":{"size":1000,"refill_time":100},"ops":{"size":0,"refill_time":0}}}`, disk))
	p.ok("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"cache_type":"Writeback"}`, disk))
	p.ok("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, r.path("v.sock")))
	p.ok("PUT", "/balloon", `{"amount_mib":16,"deflate_on_oom":true,"stats_polling_interval_s":1}`)
	p.ok("PUT", "/entropy", `{}`)
	p.ok("PUT", "/mmds", `{"latest":{"meta-data":{"id":12345678901234567890}}}`)
	p.ok("PATCH", "/mmds", `{"latest":{"user-data":"x"}}`)
	p.expect("GET", "/mmds", "", 200, `{"latest":{"meta-data":{"id":12345678901234567890},"user-data":"x"}}`)
	p.expect("GET", "/machine-config", "", 200, `{"vcpu_count":1,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}`)
	vmcfg := p.expect("GET", "/vm/config", "", 200, "*")
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal([]byte(vmcfg.body), &cfg); err != nil || len(cfg) < 11 {
		r.t.Errorf("GET /vm/config: %v: %s", err, vmcfg.body)
	}
	p.expect("GET", "/balloon", "", 200, "*")
	st, err := os.Stat(r.path("v.sock"))
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		r.t.Errorf("PUT /vsock did not create its socket: %v", err)
	}
}

func scStates(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeCAD)
	p.state("Running")
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	p.state("Paused")
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	p.state("Paused")
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.state("Running")
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
}

func scPreBootRefusals(r *run) {
	p := r.start("fc")
	p.refused("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Start microvm error: Cannot start microvm without kernel configuration.")
	for _, c := range [][3]string{
		{"PUT", "/actions", `{"action_type":"FlushMetrics"}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PATCH", "/vm", `{"state":"Resumed"}`},
		{"PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, r.path("s"), r.path("m"))},
		{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/x"}`},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
		{"PATCH", "/balloon", `{"amount_mib":1}`},
		{"PATCH", "/balloon/statistics", `{"stats_polling_interval_s":1}`},
		{"GET", "/balloon/statistics", ""},
	} {
		p.refused(c[0], c[1], c[2], msgBefore)
	}
	if r.tg.minor >= 14 {
		p.refused("GET", "/hotplug/memory", "", msgBefore)
		p.refused("PATCH", "/hotplug/memory", `{"requested_size_mib":2}`, msgBefore)
		p.refused("GET", "/balloon/hinting/status", "", msgBefore)
	}
	p.state("Not started")
	if _, err := os.Stat(r.path("s")); err == nil {
		r.t.Errorf("a refused snapshot/create wrote its state file")
	}
}

func scPostBootRefusals(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeCAD)
	for _, c := range [][3]string{
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, r.kernel)},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
		{"PATCH", "/machine-config", `{"vcpu_count":2}`},
		{"PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true}`, r.kernel)},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, r.path("m.json"))},
		{"PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, r.path("v.sock"))},
		{"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":false}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/cpu-config", `{}`},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`},
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, r.path("s"), r.path("m"))},
	} {
		p.refused(c[0], c[1], c[2], msgAfter)
	}
	// The MMDS data store works after boot without /mmds/config.
	p.ok("PUT", "/mmds", `{"a":1}`)
	p.expect("GET", "/mmds", "", 200, `{"a":1}`)
	notFound := "Failed perform action on device: Device not found"
	if r.tg.minor < 13 {
		notFound = "Device manager error: Failed to find the device on the bus."
	}
	p.refused("PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/x"}`,
		"Drive config error: Unable to patch the block device: "+notFound+" Please verify the request arguments.")
	p.refused("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`,
		"Network config error: Unable to update the net device: "+notFound)
	p.refused("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, r.path("s"), r.path("m")),
		"Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	p.state("Running")
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
}

func scBodyChecks(r *run) {
	p := r.start("fc")
	const pre = "An error occurred when deserializing the json body of a request: "
	for _, c := range []struct{ method, path, body, msg string }{
		{"PUT", "/actions", `{"action_type":"Bogus"}`, "unknown variant `Bogus`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 22."},
		{"PUT", "/actions", `{"action_type":"InstanceStart","x":1}`, "unknown field `x`, expected `action_type` at line 1 column 34."},
		{"PUT", "/actions", `{}`, "missing field `action_type` at line 1 column 2."},
		{"PUT", "/actions", `{"action_type":"FlushMetrics"} x`, "trailing characters at line 1 column 32."},
		{"PUT", "/boot-source", `{"kernel_image_path":"/k","foo":1}`, "unknown field `foo`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column 31."},
		{"PUT", "/boot-source", `{"kernel_image_path":1}`, "invalid type: integer `1`, expected a string at line 1 column 22."},
		{"PUT", "/machine-config", `{"vcpu_count":256,"mem_size_mib":128}`, "invalid value: integer `256`, expected u8 at line 1 column 17."},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"smt":null}`, "invalid type: null, expected a boolean at line 1 column 45."},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}`, "unknown variant `1G`, expected `None` or `2M` at line 1 column 52."},
		{"PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1}}}`, "missing field `refill_time` at line 1 column 77."},
		{"PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"zz":null}}`, "unknown field `zz`, expected `bandwidth` or `ops` at line 1 column 59."},
		{"PUT", "/network-interfaces/a", `{"iface_id":"a","host_dev_name":"tap0","guest_mac":"zz"}`, "The provided MAC address is invalid. at line 1 column 56."},
		{"PUT", "/logger", `{"level":"loud"}`, "Invalid LevelFilter at line 1 column 16."},
		{"PUT", "/vsock", `{"guest_cid":3}`, "missing field `uds_path` at line 1 column 15."},
		{"PATCH", "/vm", `{"state":"Stopped"}`, "unknown variant `Stopped`, expected `Paused` or `Resumed` at line 1 column 18."},
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q}`, r.path("s")), "missing field: either `mem_backend` or `mem_file_path` is required."},
		{"PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`, "unknown variant `Incremental`, expected `Diff` or `Full` at line 1 column 72."},
		{"PUT", "/mmds", `{"a":`, "EOF while parsing a value at line 1 column 5."},
	} {
		p.refused(c.method, c.path, c.body, pre+c.msg)
	}
	// TokenBucket and the network overrides accept unknown fields; the rest reject them.
	p.ok("PUT", "/entropy", `{"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":2}}}`)
	// serde also reads a struct from an array of its fields in order.
	p.refused("PUT", "/actions", `["FlushMetrics"]`, msgBefore)
}

func scHTTPErrors(r *run) {
	p := r.start("fc")
	p.refused("PUT", "/foo/bar", `{}`, "Invalid request method and/or path: PUT foo.")
	p.refused("GET", "/boot-source", "", "Invalid request method and/or path: GET boot-source.")
	p.refused("GET", "/?x=1", "", "Invalid request method and/or path: GET ?x=1.")
	p.refused("PUT", "/mmds/foo", `{}`, "Unrecognized PUT request path `foo`.")
	p.refused("PUT", "/snapshot", `{}`, "Missing snapshot operation type.")
	p.refused("PUT", "/snapshot/foo", `{}`, "Invalid request method and/or path: PUT /snapshot/foo.")
	p.refused("GET", "/", `{}`, "GET request cannot have a body.")
	p.refused("PUT", "/actions", "", "Empty PUT request.")
	p.refused("PATCH", "/vm", "", "Empty PATCH request.")
	p.refused("PATCH", "/machine-config", `{}`, "Empty PATCH request.")
	p.refused("PUT", "/drives/a-b", `{}`, "API Resource IDs can only contain alphanumeric characters and underscores.")
	p.refused("PUT", "/drives", `{}`, "The ID cannot be empty.")
	p.refused("PUT", "/drives/ab", `{"drive_id":"a","path_on_host":"/x","is_root_device":false}`, "The id from the path does not match the id from the body!")
	p.refused("PUT", "/network-interfaces/ab", `{"iface_id":"a","host_dev_name":"tap0"}`, "The id from the path [ab] does not match the id from the body [a]!")
	p.expect("GET", "/version/x", "", 200, fmt.Sprintf(`{"firecracker_version":%q}`, r.tg.version))
	micro := func(msg string) string {
		return `{ "error": "` + msg + "\nAll previous unanswered requests will be dropped.\" }"
	}
	p.expect("POST", "/", `{}`, 400, micro("Invalid HTTP Method: Unsupported HTTP method."))
	p.expect("DELETE", "/drives/a", "", 400, micro("Invalid HTTP Method: Unsupported HTTP method."))
	dep := p.do("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"None"}`)
	if dep.status != 204 || !dep.deprecated {
		r.t.Errorf("cpu_template: %+v, want 204 with Deprecation: true", dep)
	}
	dep = p.do("PUT", "/vsock", fmt.Sprintf(`{"vsock_id":"v","guest_cid":3,"uds_path":%q}`, r.path("v.sock")))
	if dep.status != 204 || !dep.deprecated {
		r.t.Errorf("vsock_id: %+v, want 204 with Deprecation: true", dep)
	}
	p.state("Not started")

	// Last, because Firecracker answers an oversized request as soon as it has read the
	// headers and then parses the unread body as further requests: depending on timing the
	// client gets the 400, or the connection breaks while the body is still being written.
	big := `{"a":"` + strings.Repeat("x", 51200) + `"}`
	resp, err := p.try("PUT", "/mmds", big, nil)
	want := micro("Request payload with size 51208 is larger than the limit of 51200 allowed by server.")
	if err == nil && (resp.status != 400 || resp.body != want) {
		r.t.Errorf("PUT /mmds with 51208 bytes: %d %s, want 400 %s (or a broken connection)", resp.status, clip(resp.body), want)
	}
	r.note("%s: PUT /mmds (51208 bytes) => refused", p.name)
}

func scDeviceChecks(r *run) {
	p := r.start("fc")
	disk := r.path("disk.img")
	if err := os.WriteFile(disk, make([]byte, 512), 0o644); err != nil {
		r.t.Fatal(err)
	}
	missing := r.path("missing.img")
	p.refused("PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`,
		"Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	p.refused("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`,
		"Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	p.refused("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`,
		"Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	if r.tg.minor >= 10 {
		p.refused("PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":false}`, missing),
			"Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) "+missing)
		p.refused("PUT", "/drives/a", `{"drive_id":"a","is_root_device":false}`, "Drive config error: Unable to create the virtio block device: Invalid block config.")
	} else {
		p.refused("PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":false}`, missing),
			fmt.Sprintf(`Drive config error: Unable to create the virtio block device: VirtioBackend(BackingFile(Os { code: 2, kind: NotFound, message: "No such file or directory" }, %q))`, missing))
		p.refused("PUT", "/drives/a", `{"drive_id":"a","is_root_device":false}`, "Drive config error: Unable to create the virtio block device: InvalidBlockConfig")
	}
	p.ok("PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":true}`, disk))
	p.refused("PUT", "/drives/b", fmt.Sprintf(`{"drive_id":"b","path_on_host":%q,"is_root_device":true}`, disk), "Drive config error: A root block device already exists!")
	p.refused("PUT", "/network-interfaces/n", `{"iface_id":"n","host_dev_name":"a-name-far-too-long-for-a-tap"}`,
		"Network config error: Could not create the network device: Open tap device failed: Invalid interface name")
	if r.tg.minor >= 10 {
		p.refused("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, r.path("nodir/v.sock")),
			"Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: No such file or directory (os error 2)")
	}
	p.refused("PUT", "/balloon", `{"amount_mib":1000,"deflate_on_oom":false}`, "Balloon config error: Amount of pages requested is too large.")
	p.refused("PUT", "/mmds/config", `{"network_interfaces":[]}`, "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	p.refused("PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`,
		"MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
	p.refused("PUT", "/logger", fmt.Sprintf(`{"log_path":%q}`, r.path("nodir/fc.log")), "Logger error: Failed to open target file: No such file or directory (os error 2)")
	p.refused("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, r.path("nodir/m.json")),
		"Metrics error: Cannot initialize the metrics system due to bad user input: No such file or directory (os error 2)")
	if err := os.WriteFile(r.path("m.json"), nil, 0o644); err != nil {
		r.t.Fatal(err)
	}
	p.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, r.path("m.json")))
	p.refused("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, r.path("m.json")),
		"Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
	if r.tg.minor >= 14 {
		p.refused("PUT", "/hotplug/memory", `{"total_size_mib":100}`, "Memory hotplug config error: Total size must not be lower than slot size (128 MiB)")
		p.ok("PUT", "/hotplug/memory", `{"total_size_mib":1024}`)
		p.refused("PUT", "/pmem/p", fmt.Sprintf(`{"id":"p","path_on_host":%q}`, missing),
			"Pmem device error: Unable to create the virtio-pmem device: Error accessing backing file: No such file or directory (os error 2)")
		p.refused("PUT", "/pmem/p", fmt.Sprintf(`{"id":"p","path_on_host":%q,"root_device":true}`, disk),
			"Pmem device error: Attempt to add pmem as a root device while the root device defined as a block device")
		p.ok("PUT", "/serial", fmt.Sprintf(`{"serial_out_path":%q}`, r.path("serial.out")))
	} else {
		p.refused("PUT", "/serial", `{}`, "Invalid request method and/or path: PUT serial.")
		p.refused("PUT", "/pmem/p", `{}`, "Invalid request method and/or path: PUT pmem.")
	}
	p.expect("GET", "/vm/config", "", 200, "*")
}

func scKernelChecks(r *run) {
	p := r.start("fc")
	missing := r.path("missing")
	p.refused("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, missing),
		"Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)")
	zeros := r.path("zeros")
	if err := os.WriteFile(zeros, make([]byte, 4096), 0o644); err != nil {
		r.t.Fatal(err)
	}
	p.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, zeros))
	want := "Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: " +
		"Kernel Loader: failed to load ELF kernel image: Kernel Loader: Invalid Elf magic number"
	if r.tg.minor < 12 {
		want = "Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image"
	}
	p.refused("PUT", "/actions", `{"action_type":"InstanceStart"}`, want)
	p.state("Not started")
	// The configuration stays and a later start works.
	p.boot(testguest.ModeHello)
	p.wait("exit 0")
}

func scHello(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeHello)
	p.wait("exit 0")
	if got := p.serial(); !slices.Equal(got, []string{testguest.HelloLine}) {
		r.t.Errorf("serial = %q, want just the hello line", got)
	}
	r.hasLog("stdout", p.stdout.String(), "[test:main] Firecracker exiting successfully. exit_code=0")
}

func scHalt(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeHalt)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.alive(300 * time.Millisecond)
	p.state("Running")
	_ = p.cmd.Process.Kill()
	p.wait("signal killed")
}

func scCounter(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeCounter)
	p.waitSerial(testguest.TickLine(2))
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	time.Sleep(20 * time.Millisecond) // a tick written just before the pause lands
	frozen := len(p.serial())
	time.Sleep(100 * time.Millisecond)
	if n := len(p.serial()); n != frozen {
		r.t.Errorf("the guest printed %d ticks while paused", n-frozen)
	}
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.waitSerial(testguest.TickLine(uint64(frozen + 1)))
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
}

// snapshotOf boots a cad guest, pauses it and snapshots it into r's directory.
func snapshotOf(r *run) (state, mem string) {
	p := r.start("orig")
	p.boot(testguest.ModeCAD)
	state, mem = r.path("vm.state"), r.path("vm.mem")
	body := fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem)
	p.refused("PUT", "/snapshot/create", body, "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	p.ok("PUT", "/snapshot/create", body)
	p.state("Paused")
	st, err := os.Stat(state)
	if err != nil || st.Size() == 0 {
		r.t.Fatalf("snapshot state file: %v", err)
	}
	mst, err := os.Stat(mem)
	if err != nil || mst.Size() != 32<<20 {
		r.t.Fatalf("memory file: %v, size %d, want %d", err, mst.Size(), 32<<20)
	}
	if sys, ok := mst.Sys().(*syscall.Stat_t); ok && !r.tg.real && sys.Blocks*512 >= mst.Size() {
		r.t.Errorf("the fake's memory file is not sparse: %d blocks", sys.Blocks)
	}
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
	return state, mem
}

func scSnapshot(r *run) {
	state, mem := snapshotOf(r)
	d := r.spawn("describe", false, "--describe-snapshot", state)
	d.wait("exit 0")
	if out := strings.SplitN(d.stdout.String(), "\n", 2)[0]; out != "v"+snapshotFormats[r.tg.minor] {
		r.t.Errorf("--describe-snapshot printed %q, want v%s", out, snapshotFormats[r.tg.minor])
	}
	r.note("describe: %s", strings.SplitN(d.stdout.String(), "\n", 2)[0])
	p := r.start("restored")
	p.ok("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, state, mem))
	p.state("Paused")
	p.expect("GET", "/vm/config", "", 200, "*")
	p.refused("PUT", "/actions", `{"action_type":"InstanceStart"}`, msgAfter)
	p.expect("GET", "/machine-config", "", 200, `{"vcpu_count":1,"mem_size_mib":32,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`)
	// Ctrl-Alt-Del reaches a paused guest when it resumes.
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.alive(100 * time.Millisecond)
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.wait("exit 0")
	if n := len(p.serial()); n != 0 {
		r.t.Errorf("the restored guest printed %d lines, want none", n)
	}
}

func scSnapshotResume(r *run) {
	state, mem := snapshotOf(r)
	p := r.start("restored")
	resp := p.do("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`, state, mem))
	if resp.status != 204 || !resp.deprecated {
		r.t.Errorf("load with mem_file_path: %+v, want 204 with Deprecation: true", resp)
	}
	p.state("Running")
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
}

func scFreshProcess(r *run) {
	p := r.start("fc")
	p.ok("PUT", "/logger", `{"level":"Info"}`)
	p.ok("PUT", "/mmds", `{"a":1}`)
	p.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, r.kernel))
	p.refused("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, r.path("s"), r.path("m")),
		"Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	p.state("Not started")
	p.alive(50 * time.Millisecond)
}

func scFailedLoad(r *run) {
	p := r.start("fc")
	missing := r.path("missing.state")
	p.refused("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, missing, r.path("m")),
		"Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)")
	p.wait("exit 1")
	r.hasLog("stdout", p.stdout.String(), "[test:main] Firecracker exiting with error. exit_code=1")
	if _, err := os.Stat(p.sock); err != nil {
		r.t.Errorf("the socket should stay behind as Firecracker leaves it: %v", err)
	}
}

// scLoadReopensDrives: a snapshot names its drives' backing files, which a load opens where
// they were: one that is gone fails the load, and the process ends.
func scLoadReopensDrives(r *run) {
	drive := r.path("drive.img")
	if err := os.WriteFile(drive, make([]byte, 4096), 0o600); err != nil {
		r.t.Fatal(err)
	}
	p := r.start("orig")
	p.ok("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":false}`, drive))
	p.boot(testguest.ModeCAD)
	state, mem := r.path("d.state"), r.path("d.mem")
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	p.ok("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem))
	_ = p.cmd.Process.Kill()
	p.wait("signal killed")
	if err := os.Remove(drive); err != nil {
		r.t.Fatal(err)
	}
	where := "Failed to restore devices: Error restoring MMIO devices"
	if r.tg.minor < 14 {
		where = "Failed to restore MMIO device: Cannot restore devices"
	}
	q := r.start("restored")
	q.refused("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, state, mem),
		"Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: "+where+
			": Block: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) "+drive)
	q.wait("exit 1")
}

func scLeftoverSocket(r *run) {
	sock := r.path("left.sock")
	if err := os.WriteFile(sock, nil, 0o644); err != nil {
		r.t.Fatal(err)
	}
	p := r.spawn("fc", false, "--api-sock", sock)
	p.wait("exit 1")
	r.hasLog("stdout", p.stdout.String(), "[anonymous-instance:main] RunWithApiError error: Failed to open the API socket at: "+sock+". Check that it is not already used.")
	r.hasLog("stdout", p.stdout.String(), "[anonymous-instance:main] Firecracker exiting with error. exit_code=1")
}

func scSigterm(r *run) {
	p := r.start("fc")
	p.boot(testguest.ModeCAD)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Fatal(err)
	}
	p.wait("signal terminated")
}

func scCommandLine(r *run) {
	type run1 struct {
		args   []string
		status string
	}
	for _, c := range []run1{
		{[]string{"--version"}, "exit 0"},
		{[]string{"--snapshot-version"}, "exit 0"},
		{[]string{"--help"}, "exit 0"},
		{[]string{"--level", "loud"}, "exit 152"},
		{[]string{"--bogus"}, "exit 153"},
		{[]string{"--id"}, "exit 153"},
		{[]string{"--id", "a", "--id", "b"}, "exit 153"},
		{[]string{"--no-api"}, "exit 153"},
		{[]string{"--seccomp-filter", "f", "--no-seccomp"}, "exit 153"},
		{[]string{"--id", "bad_id"}, "signal aborted"},
		{[]string{"--bogus", "--version"}, "exit 0"}, // --version skips the other arguments
		{[]string{"--enable-pci", "--snapshot-version"}, map[bool]string{true: "exit 0", false: "exit 153"}[r.tg.minor >= 13]},
	} {
		p := r.spawn("cli", false, c.args...)
		p.wait(c.status)
		for _, l := range strings.Split(strings.TrimRight(p.stdout.String(), "\n"), "\n") {
			if ls := logLines(l); ls != nil {
				l = ls[0]
			}
			r.note("%q stdout: %s", c.args, l)
		}
		r.note("%q stderr: %s", c.args, strings.TrimSpace(p.stderr.String()))
	}
	p := r.spawn("version", false, "--version")
	p.wait("exit 0")
	if got := strings.SplitN(p.stdout.String(), "\n", 2)[0]; got != "Firecracker v"+r.tg.version {
		r.t.Errorf("--version printed %q", got)
	}
}

func scLogMetrics(r *run) {
	logPath, metricsPath := r.path("fc.log"), r.path("metrics.json")
	if r.tg.minor < 14 {
		// Before v1.14 the files must exist.
		p := r.spawn("nolog", true, "--log-path", logPath)
		p.wait("exit 1")
		r.hasLog("stdout", p.stdout.String(), "[test:main] Could not initialize logger: Failed to open target file: No such file or directory (os error 2)")
		p = r.spawn("nometrics", true, "--metrics-path", metricsPath)
		p.wait("exit 1")
		for _, l := range logLines(p.stdout.String()) {
			r.note("nometrics: %s", l)
		}
		r.note("nometrics stderr: %s", strings.TrimSpace(p.stderr.String()))
		for _, f := range []string{logPath, metricsPath} {
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	p := r.start("fc", "--log-path", logPath, "--metrics-path", metricsPath)
	p.refused("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metricsPath),
		"Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
	p.boot(testguest.ModeCAD)
	p.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
	logText, _ := os.ReadFile(logPath)
	r.hasLog("log", string(logText), "[test:main] Running Firecracker v"+r.tg.version)
	if r.tg.minor >= 12 {
		r.hasLog("log", string(logText), fmt.Sprintf("[test:main] Listening on API socket (%q).", p.sock))
		r.hasLog("log", string(logText), "[test:fc_api] API server started.")
	}
	r.hasLog("log", string(logText), `[test:fc_api] The API server received a Put request on "/actions" with body "{\"action_type\":\"FlushMetrics\"}".`)
	r.hasLog("log", string(logText), "[test:fc_api] The request was executed successfully. Status code: 204 No Content.")
	r.hasLog("log", string(logText), "[test:main] Firecracker exiting successfully. exit_code=0")
	metrics, _ := os.ReadFile(metricsPath)
	var flushed int
	for _, l := range strings.Split(strings.TrimSpace(string(metrics)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(l, `{"utc_timestamp_ms":`) {
			flushed++
		}
	}
	if flushed == 0 {
		r.t.Errorf("no metrics line beginning with utc_timestamp_ms in:\n%s", metrics)
	}
}

func scConfigFile(r *run) {
	write := func(name, body string) string {
		path := r.path(name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			r.t.Fatal(err)
		}
		return path
	}
	good := write("hello.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"boot_args":%q},"drives":[],`+
		`"machine-config":{"vcpu_count":1,"mem_size_mib":32},"unknown-top-level-key":1}`, r.kernel, testguest.BootArgs(testguest.ModeHello)))
	p := r.spawn("noapi", false, "--no-api", "--config-file", good)
	p.wait("exit 0")
	if got := p.serial(); !slices.Equal(got, []string{testguest.HelloLine}) {
		r.t.Errorf("serial = %q", got)
	}
	r.hasLog("stdout", p.stdout.String(), "[anonymous-instance:main] Successfully started microvm that was configured from one single json")
	{
		// "cpu-config" may name a template file (and from v1.13 hold one).
		tmpl := write("template.json", `{"kvm_capabilities":[]}`)
		withCPU := write("cpu-path.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"boot_args":%q},"drives":[],"cpu-config":%q}`,
			r.kernel, testguest.BootArgs(testguest.ModeHello), tmpl))
		p := r.spawn("cpupath", false, "--no-api", "--config-file", withCPU)
		p.wait("exit 0")
	}
	cad := write("cad.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"boot_args":%q},"drives":[]}`, r.kernel, testguest.BootArgs(testguest.ModeCAD)))
	p = r.spawn("api", true, "--config-file", cad)
	p.waitSerial(testguest.ReadyLine)
	p.state("Running")
	p.refused("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, r.kernel), msgAfter)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
	for _, c := range []struct{ name, body, msg string }{
		{"nodrives.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q}}`, r.kernel),
			"Configuration for VMM from one single json failed: Invalid JSON: missing field `drives` at line 1 column "},
		{"nested.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"zz":1},"drives":[]}`, r.kernel),
			"Configuration for VMM from one single json failed: Invalid JSON: unknown field `zz`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column "},
		{"nokernel.json", `{"boot-source":{"kernel_image_path":"/nonexistent"},"drives":[]}`,
			"Configuration for VMM from one single json failed: Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"},
		{"cpu.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q},"drives":[],"cpu-config":{"zz":1}}`, r.kernel),
			map[bool]string{
				true:  "Configuration for VMM from one single json failed: Invalid JSON: data did not match any variant of untagged enum CustomCpuTemplateOrPath at line 1 column ",
				false: "Configuration for VMM from one single json failed: Invalid JSON: invalid type: map, expected path string at line 1 column ",
			}[r.tg.minor >= 13]},
	} {
		p := r.spawn(strings.TrimSuffix(c.name, ".json"), false, "--no-api", "--config-file", write(c.name, c.body))
		p.wait("exit 1")
		want := "[anonymous-instance:main] RunWithoutApiError error: Failed to build MicroVM from Json: " + c.msg
		found := false
		for _, l := range logLines(p.stdout.String()) {
			if strings.HasPrefix(l, want) {
				found = true
				r.note("%s: %s", c.name, l)
			}
		}
		if !found {
			r.t.Errorf("%s: no log line starting %q in:\n%s", c.name, want, p.stdout.String())
		}
	}
}

func scConnections(r *run) {
	p := r.start("fc")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range 10 {
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			r.t.Fatal(err)
		}
		conns = append(conns, c)
		// An answered request shows the server took the connection.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /version HTTP/1.1\r\n\r\n"); err != nil {
			r.t.Fatal(err)
		}
		buf := make([]byte, 512)
		if n, err := c.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "firecracker_version") {
			r.t.Fatalf("request on connection %d: %q %v", len(conns), buf[:n], err)
		}
	}
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		r.t.Fatal(err)
	}
	conns = append(conns, c)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	r.note("11th connection: %q %v", b, err != nil)
	if !strings.HasPrefix(string(b), "HTTP/1.1 503") || !strings.HasSuffix(string(b), `{ "error": "Too many open connections" }`) {
		r.t.Errorf("11th connection got %q, %v", b, err)
	}
	for _, c := range conns[:10] {
		_ = c.Close()
	}
	conns = conns[10:]
	time.Sleep(50 * time.Millisecond)
	p.state("Not started")
}

func scLimits(r *run) {
	p := r.start("fc", "--http-api-max-payload-size", "200", "--mmds-size-limit", "40")
	big := `{"a":"` + strings.Repeat("x", 200) + `"}`
	p.expect("PUT", "/mmds", big, 400, `{ "error": "Request payload with size 208 is larger than the limit of 200 allowed by server.`+
		"\nAll previous unanswered requests will be dropped.\" }")
	p.ok("PUT", "/mmds", `{"a":"short"}`)
	p.expect("PUT", "/mmds", `{"a":"`+strings.Repeat("y", 50)+`"}`, 413, faultBody("MMDS limit exceeded error: The MMDS patch request doesn't fit."))
	p.expect("PATCH", "/mmds", `{"b":"`+strings.Repeat("z", 40)+`"}`, 413, faultBody("MMDS limit exceeded error: The MMDS patch request doesn't fit."))
	p.expect("GET", "/mmds", "", 200, `{"a":"short"}`)
	q := r.spawn("seccomp", true, "--seccomp-filter", r.path("missing.bpf"))
	q.wait("exit 1")
	r.hasLog("stdout", q.stdout.String(), "[test:main] Seccomp error: Filter file open error: No such file or directory (os error 2)")
	r.note("seccomp stderr: %s", strings.TrimSpace(q.stderr.String()))
	for _, args := range [][]string{{"--no-seccomp"}, {"--start-time-us", "1", "--start-time-cpu-us", "2", "--parent-cpu-time-us", "3"}, {"--boot-timer"}} {
		q := r.start("flags", args...)
		q.state("Not started")
		_ = q.cmd.Process.Kill()
		q.wait("signal killed")
		_ = os.Remove(q.sock)
	}
}

// scTemplatesBootSource: which CPU template is in force, the order of the MMDS checks, and
// which boot source a failed PUT /boot-source leaves.
func scTemplatesBootSource(r *run) {
	legacy := r.tg.minor < 10
	p := r.start("fc")
	machine := func(tmpl string) string {
		return `{"vcpu_count":1,"mem_size_mib":32,"smt":false` + tmpl + `,"track_dirty_pages":false,"huge_pages":"None"}`
	}
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"T2"}`)
	p.expect("GET", "/machine-config", "", 200, machine(`,"cpu_template":"T2"`))
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32}`) // keeps the template
	p.expect("GET", "/machine-config", "", 200, machine(`,"cpu_template":"T2"`))
	p.ok("PATCH", "/machine-config", `{"cpu_template":"None"}`) // removes it
	p.expect("GET", "/machine-config", "", 200, machine(""))
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"T2"}`)
	p.ok("PUT", "/cpu-config", `{}`) // a custom template replaces the static one
	custom := ""
	if legacy {
		custom = `,"cpu_template":"None"`
	}
	p.expect("GET", "/machine-config", "", 200, machine(custom))

	p.refused("PUT", "/mmds/config", `{"network_interfaces":[],"ipv4_address":"10.0.0.1"}`, "MMMDS config error: The MMDS IPv4 address is not link local.")

	halt := testguest.BootArgs("halt")
	p.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, r.kernel, halt))
	p.refused("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q}`, r.kernel, r.path("missing")),
		"Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. No such file or directory (os error 2)")
	shown := fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":null,"boot_args":%q}`, r.kernel, halt)
	if legacy {
		shown = fmt.Sprintf(`{"kernel_image_path":%q,"initrd_path":%q,"boot_args":null}`, r.kernel, r.path("missing"))
	}
	cfg := p.expect("GET", "/vm/config", "", 200, "*")
	if !strings.Contains(cfg.body, `"boot-source":`+shown) {
		r.t.Errorf("GET /vm/config reports the boot source\n%s\nwant %s", cfg.body, shown)
	}
	// The boot source that succeeded boots, whatever GET /vm/config says.
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	p.waitSerial(testguest.FirstLine("halt"))
}

// scInactiveBalloon: a balloon that the guest never activates (the test guest has no
// balloon driver), and one that is missing.
func scInactiveBalloon(r *run) {
	legacy := r.tg.minor < 10
	hinting := r.tg.minor >= 14
	p := r.start("fc")
	extra := ""
	if hinting {
		extra = `,"free_page_hinting":true`
	}
	p.ok("PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true,"stats_polling_interval_s":1`+extra+`}`)
	p.boot("halt")
	p.expect("GET", "/balloon/statistics", "", 200, `{"target_pages":256,"actual_pages":0,"target_mib":1,"actual_mib":0}`)
	msg := func(legacyVariant, current string) string {
		if legacy {
			return "Balloon config error: Error creating the balloon device: " + legacyVariant
		}
		return current
	}
	inactive := "Balloon update error: Balloon: Device not activated yet."
	p.refused("PATCH", "/balloon", `{"amount_mib":2}`, msg("DeviceNotActive", inactive))
	p.refused("PATCH", "/balloon", `{"amount_mib":2000}`, msg("TooManyPagesRequested", inactive))
	p.refused("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":0}`,
		msg("StatisticsStateChange", "Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation."))
	p.ok("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":1}`)
	if hinting {
		p.refused("PATCH", "/balloon/hinting/start", "", inactive) // the body is optional
		p.expect("GET", "/balloon/hinting/status", "", 200, `{"host_cmd":0,"guest_cmd":null}`)
		p.refused("PATCH", "/balloon/hinting/stop", "", inactive)
	}
	if legacy {
		// v1.7.0 panics on a new interval for a device that is not active.
		_, err := p.try("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":2}`, nil)
		r.note("fc: PATCH /balloon/statistics to a new interval: answered %v", err == nil)
		p.wait("signal aborted")
	} else {
		p.ok("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":2}`)
	}

	q := r.start("nb")
	q.boot("halt")
	missing := "Failed perform action on device: Device not found"
	if r.tg.minor < 13 {
		missing = "Device manager error: Failed to find the device on the bus."
	}
	q.refused("GET", "/balloon", "", msg("DeviceNotFound", "Internal VMM error: "+missing))
	q.refused("GET", "/balloon/statistics", "", msg("DeviceNotFound", "Internal VMM error: "+missing))
	q.refused("PATCH", "/balloon/statistics", `{"stats_polling_interval_s":2}`, msg("DeviceNotFound", "Balloon update error: "+missing))
}
