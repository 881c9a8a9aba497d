package fcapi

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testutil"
)

// endpointCase is one client call, with its golden request in testdata/<name>.json.
type endpointCase struct {
	name string
	// op is the endpoint as the specs name it.
	op   string
	call func(ctx context.Context, c *Client) error
}

func bucket(size, refill, burst int64) *TokenBucket {
	return &TokenBucket{Size: size, RefillTime: refill, OneTimeBurst: burst}
}

var fullLimiter = &RateLimiter{Bandwidth: bucket(1<<20, 100, 4<<20), Ops: bucket(1000, 1000, 0)}

func ptr[T any](v T) *T { return &v }

// endpointCases covers every endpoint of the newest spec (and the hot-unplug DELETEs it lacks):
// each request model with every field set, and a minimal form where older releases lack some
// of those fields.
var endpointCases = []endpointCase{
	{"get_instance_info", "GET /", func(ctx context.Context, c *Client) error {
		_, err := c.GetInstanceInfo(ctx)
		return err
	}},
	{"get_version", "GET /version", func(ctx context.Context, c *Client) error {
		_, err := New(c.SocketPath()).Version(ctx)
		return err
	}},
	{"get_vm_config", "GET /vm/config", func(ctx context.Context, c *Client) error {
		_, err := c.GetVMConfig(ctx)
		return err
	}},
	{"start_instance", "PUT /actions", func(ctx context.Context, c *Client) error { return c.StartInstance(ctx) }},
	{"send_ctrl_alt_del", "PUT /actions", func(ctx context.Context, c *Client) error { return c.SendCtrlAltDel(ctx) }},
	{"flush_metrics", "PUT /actions", func(ctx context.Context, c *Client) error { return c.FlushMetrics(ctx) }},
	{"put_boot_source", "PUT /boot-source", func(ctx context.Context, c *Client) error {
		return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k/vmlinux", BootArgs: "console=ttyS0 reboot=k panic=1", InitrdPath: "/k/initrd"})
	}},
	{"put_boot_source_min", "PUT /boot-source", func(ctx context.Context, c *Client) error {
		return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k/vmlinux"})
	}},
	{"get_machine_config", "GET /machine-config", func(ctx context.Context, c *Client) error {
		_, err := c.GetMachineConfig(ctx)
		return err
	}},
	{"put_machine_config", "PUT /machine-config", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 512, SMT: true, TrackDirtyPages: true, HugePages: HugePagesTransparent, CPUTemplate: CPUTemplateT2})
	}},
	{"put_machine_config_min", "PUT /machine-config", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
	}},
	{"patch_machine_config", "PATCH /machine-config", func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{VCPUCount: 4, MemSizeMiB: 1024, SMT: ptr(false), TrackDirtyPages: ptr(true), HugePages: HugePages2M, CPUTemplate: CPUTemplateNone})
	}},
	// Firecracker takes only the fields of its own architecture.
	{"put_cpu_config", "PUT /cpu-config", func(ctx context.Context, c *Client) error {
		return c.PutCPUConfig(ctx, CPUConfig{
			KVMCapabilities: []string{"121", "!122"},
			CPUIDModifiers: []CPUIDLeafModifier{{Leaf: "0x1", Subleaf: "0x0", Flags: 0, Modifiers: []CPUIDRegisterModifier{
				{Register: "ecx", Bitmap: "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxx0001"},
			}}},
			MSRModifiers: []MSRModifier{{Addr: "0x10a", Bitmap: "0b" + strings.Repeat("x", 63) + "1"}},
		})
	}},
	{"put_cpu_config_aarch64", "PUT /cpu-config", func(ctx context.Context, c *Client) error {
		return c.PutCPUConfig(ctx, CPUConfig{
			KVMCapabilities: []string{"!170"},
			RegModifiers:    []RegModifier{{Addr: "0x603000000013c020", Bitmap: "0bx0"}},
			VCPUFeatures:    []VCPUFeature{{Index: 0, Bitmap: "0b1100000"}},
		})
	}},
	{"put_cpu_config_min", "PUT /cpu-config", func(ctx context.Context, c *Client) error {
		return c.PutCPUConfig(ctx, x86CPUIDTemplate)
	}},
	{"put_drive", "PUT /drives/{drive_id}", func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "/img/rootfs.ext4", IsRootDevice: true, IsReadOnly: true,
			PartUUID: "0eaa91a0-01", CacheType: CacheWriteback, IOEngine: IOEngineAsync, RateLimiter: fullLimiter})
	}},
	{"put_drive_vhost_user", "PUT /drives/{drive_id}", func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "data_1", Socket: "/run/vhost.sock", CacheType: CacheUnsafe})
	}},
	{"patch_drive", "PATCH /drives/{drive_id}", func(ctx context.Context, c *Client) error {
		return c.PatchDrive(ctx, DriveUpdate{DriveID: "rootfs", PathOnHost: "/img/other.ext4", RateLimiter: &RateLimiter{Bandwidth: bucket(0, 0, 0)}})
	}},
	{"delete_drive", "DELETE /drives/{drive_id}", func(ctx context.Context, c *Client) error { return c.DeleteDrive(ctx, "data_1") }},
	{"put_network_interface", "PUT /network-interfaces/{iface_id}", func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02", MTU: 1400,
			RxRateLimiter: fullLimiter, TxRateLimiter: &RateLimiter{Ops: bucket(10, 1, 0)}})
	}},
	{"put_network_interface_min", "PUT /network-interfaces/{iface_id}", func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", RxRateLimiter: fullLimiter})
	}},
	{"patch_network_interface", "PATCH /network-interfaces/{iface_id}", func(ctx context.Context, c *Client) error {
		return c.PatchNetworkInterface(ctx, NetworkInterfaceUpdate{IfaceID: "eth0", RxRateLimiter: fullLimiter, TxRateLimiter: &RateLimiter{Bandwidth: bucket(0, 0, 0)}})
	}},
	{"delete_network_interface", "DELETE /network-interfaces/{iface_id}", func(ctx context.Context, c *Client) error {
		return c.DeleteNetworkInterface(ctx, "eth0")
	}},
	{"put_pmem", "PUT /pmem/{id}", func(ctx context.Context, c *Client) error {
		return c.PutPmem(ctx, Pmem{ID: "pmem0", PathOnHost: "/img/pmem.img", RootDevice: true, ReadOnly: true, RateLimiter: fullLimiter})
	}},
	{"put_pmem_min", "PUT /pmem/{id}", func(ctx context.Context, c *Client) error {
		return c.PutPmem(ctx, Pmem{ID: "pmem0", PathOnHost: "/img/pmem.img"})
	}},
	{"patch_pmem", "PATCH /pmem/{id}", func(ctx context.Context, c *Client) error {
		return c.PatchPmem(ctx, PmemUpdate{ID: "pmem0", RateLimiter: fullLimiter})
	}},
	{"delete_pmem", "DELETE /pmem/{id}", func(ctx context.Context, c *Client) error { return c.DeletePmem(ctx, "pmem0") }},
	{"put_vsock", "PUT /vsock", func(ctx context.Context, c *Client) error {
		return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/run/v.sock"})
	}},
	{"put_entropy", "PUT /entropy", func(ctx context.Context, c *Client) error {
		return c.PutEntropy(ctx, EntropyDevice{RateLimiter: fullLimiter})
	}},
	{"put_entropy_min", "PUT /entropy", func(ctx context.Context, c *Client) error { return c.PutEntropy(ctx, EntropyDevice{}) }},
	{"put_serial", "PUT /serial", func(ctx context.Context, c *Client) error {
		return c.PutSerial(ctx, SerialDevice{SerialOutPath: "/run/serial.log", RateLimiter: bucket(4096, 100, 8192)})
	}},
	{"put_serial_min", "PUT /serial", func(ctx context.Context, c *Client) error {
		return c.PutSerial(ctx, SerialDevice{SerialOutPath: "/run/serial.log"})
	}},
	{"put_balloon", "PUT /balloon", func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalS: 1, FreePageHinting: true, FreePageReporting: true})
	}},
	{"put_balloon_min", "PUT /balloon", func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{AmountMiB: 0})
	}},
	{"get_balloon", "GET /balloon", func(ctx context.Context, c *Client) error {
		_, err := c.GetBalloon(ctx)
		return err
	}},
	{"patch_balloon", "PATCH /balloon", func(ctx context.Context, c *Client) error {
		return c.PatchBalloon(ctx, BalloonUpdate{AmountMiB: 32})
	}},
	{"get_balloon_stats", "GET /balloon/statistics", func(ctx context.Context, c *Client) error {
		_, err := c.GetBalloonStats(ctx)
		return err
	}},
	{"patch_balloon_stats", "PATCH /balloon/statistics", func(ctx context.Context, c *Client) error {
		return c.PatchBalloonStats(ctx, BalloonStatsUpdate{StatsPollingIntervalS: 5})
	}},
	{"start_balloon_hinting", "PATCH /balloon/hinting/start", func(ctx context.Context, c *Client) error {
		return c.StartBalloonHinting(ctx, BalloonHintingStart{AcknowledgeOnStop: true})
	}},
	{"start_balloon_hinting_min", "PATCH /balloon/hinting/start", func(ctx context.Context, c *Client) error {
		return c.StartBalloonHinting(ctx, BalloonHintingStart{})
	}},
	{"get_balloon_hinting_status", "GET /balloon/hinting/status", func(ctx context.Context, c *Client) error {
		_, err := c.GetBalloonHintingStatus(ctx)
		return err
	}},
	{"stop_balloon_hinting", "PATCH /balloon/hinting/stop", func(ctx context.Context, c *Client) error { return c.StopBalloonHinting(ctx) }},
	{"put_logger", "PUT /logger", func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{LogPath: "/run/fc.log", Level: LogDebug, ShowLevel: true, ShowLogOrigin: true, Module: "api_server::request"})
	}},
	{"put_metrics", "PUT /metrics", func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/run/metrics.json", EmitID: true, Properties: map[string]string{"host": "h1"}})
	}},
	{"put_metrics_min", "PUT /metrics", func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/run/metrics.json"})
	}},
	{"put_mmds_config", "PUT /mmds/config", func(ctx context.Context, c *Client) error {
		return c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSv2, NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.170.2", IMDSCompat: true})
	}},
	{"put_mmds_config_min", "PUT /mmds/config", func(ctx context.Context, c *Client) error {
		return c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSv2, NetworkInterfaces: []string{"eth0"}})
	}},
	{"put_mmds", "PUT /mmds", func(ctx context.Context, c *Client) error {
		return c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]any{"instance-id": "i-1", "tags": []string{"a"}}}})
	}},
	{"patch_mmds", "PATCH /mmds", func(ctx context.Context, c *Client) error {
		return c.PatchMMDS(ctx, json.RawMessage(`{"latest":{"meta-data":{"instance-id":null,"zone":"z1"}}}`))
	}},
	{"get_mmds", "GET /mmds", func(ctx context.Context, c *Client) error {
		var out map[string]any
		return c.GetMMDS(ctx, &out)
	}},
	{"put_memory_hotplug", "PUT /hotplug/memory", func(ctx context.Context, c *Client) error {
		return c.PutMemoryHotplug(ctx, MemoryHotplugConfig{TotalSizeMiB: 1024, SlotSizeMiB: 128, BlockSizeMiB: 2})
	}},
	{"patch_memory_hotplug", "PATCH /hotplug/memory", func(ctx context.Context, c *Client) error {
		return c.PatchMemoryHotplug(ctx, MemoryHotplugSizeUpdate{RequestedSizeMiB: 0})
	}},
	{"get_memory_hotplug", "GET /hotplug/memory", func(ctx context.Context, c *Client) error {
		_, err := c.GetMemoryHotplug(ctx)
		return err
	}},
	{"pause_vm", "PATCH /vm", func(ctx context.Context, c *Client) error { return c.PauseVM(ctx) }},
	{"resume_vm", "PATCH /vm", func(ctx context.Context, c *Client) error { return c.ResumeVM(ctx) }},
	{"create_snapshot", "PUT /snapshot/create", func(ctx context.Context, c *Client) error {
		return c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: "/s/vm.state", MemFilePath: "/s/vm.mem", SnapshotType: SnapshotDiff})
	}},
	{"load_snapshot", "PUT /snapshot/load", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{
			SnapshotPath: "/s/vm.state", MemBackend: MemoryBackend{BackendType: MemBackendUffd, BackendPath: "/run/uffd.sock"},
			TrackDirtyPages: true, ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap7"}},
			VsockOverride: &VsockOverride{UDSPath: "/run/v2.sock"}, ClockRealtime: true, HugePages: HugePages2M,
		})
	}},
	{"load_snapshot_min", "PUT /snapshot/load", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm.state", MemBackend: MemoryBackend{BackendType: MemBackendFile, BackendPath: "/s/vm.mem"}, TrackDirtyPages: true, ResumeVM: true})
	}},
}

// x86CPUIDTemplate sets one CPUID bit that every x86_64 host has (SSE3).
var x86CPUIDTemplate = CPUConfig{
	CPUIDModifiers: []CPUIDLeafModifier{{Leaf: "0x1", Subleaf: "0x0", Flags: 0, Modifiers: []CPUIDRegisterModifier{
		{Register: "ecx", Bitmap: "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1"},
	}}},
}

// golden is the file form of one request.
type golden struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
}

func encodeGolden(r recorded) ([]byte, error) {
	g := golden{Method: r.Method, Path: r.Path, Body: json.RawMessage("null")}
	if len(r.Body) > 0 {
		g.Body = r.Body
	}
	b, err := json.MarshalIndent(g, "", "  ")
	return append(b, '\n'), err
}

// newest is the release of the newest spec: the client in the golden test claims it, so that
// nothing is refused and no GET /version is sent.
var newest = Version{Major: 1, Minor: 17, Patch: 0, Pre: "dev"}

// TestGoldenRequests sends every endpoint case and compares the request (method, path, body)
// with testdata/<case>.json; -update rewrites the files.
func TestGoldenRequests(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(newest))
	defer c.Close()
	seen := map[string]bool{}
	for _, tc := range endpointCases {
		t.Run(tc.name, func(t *testing.T) {
			if seen[tc.name] {
				t.Fatalf("duplicate case name %s", tc.name)
			}
			seen[tc.name] = true
			api.reset()
			if err := tc.call(t.Context(), c); err != nil {
				t.Fatal(err)
			}
			reqs := api.requests()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(reqs))
			}
			got, err := encodeGolden(reqs[0])
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join("testdata", tc.name+".json")
			if testutil.Update() {
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGoldenRequests -update to create it)", err)
			}
			var g, w golden
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(want, &w); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if g.Method != w.Method || g.Path != w.Path || !jsonEqual(t, g.Body, w.Body) {
				t.Errorf("request differs from %s:\ngot:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}
