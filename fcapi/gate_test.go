package fcapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func fullVMConfig() VMConfig {
	return VMConfig{
		Balloon:           &Balloon{AmountMiB: 16, DeflateOnOOM: true, FreePageHinting: true},
		Drives:            []Drive{{DriveID: "rootfs", PathOnHost: "/img/rootfs.ext4", IsRootDevice: true, IsReadOnly: true, CacheType: CacheUnsafe, IOEngine: IOEngineSync}},
		BootSource:        &BootSource{KernelImagePath: "/k/vmlinux", BootArgs: "console=ttyS0"},
		CPUConfig:         &CPUConfig{KVMCapabilities: []string{"!121"}},
		Logger:            &Logger{LogPath: "/run/fc.log", Level: LogInfo},
		MachineConfig:     &MachineConfig{VCPUCount: 2, MemSizeMiB: 256, HugePages: HugePagesNone},
		Metrics:           &Metrics{MetricsPath: "/run/metrics.json"},
		MemoryHotplug:     &MemoryHotplugConfig{TotalSizeMiB: 1024},
		MMDSConfig:        &MMDSConfig{Version: MMDSv2, NetworkInterfaces: []string{"eth0"}},
		NetworkInterfaces: []NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02", MTU: 1500}},
		Pmem:              []Pmem{{ID: "pmem0", PathOnHost: "/img/p.img"}},
		Vsock:             &Vsock{GuestCID: 3, UDSPath: "/run/v.sock"},
		Entropy:           &EntropyDevice{},
	}
}

func minVMConfig() VMConfig {
	return VMConfig{
		BootSource:    &BootSource{KernelImagePath: "/k/vmlinux"},
		MachineConfig: &MachineConfig{VCPUCount: 1, MemSizeMiB: 128},
	}
}

func TestVMConfigJSON(t *testing.T) {
	b, err := json.Marshal(minVMConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"drives":[],"boot-source":{"kernel_image_path":"/k/vmlinux"},"machine-config":{"vcpu_count":1,"mem_size_mib":128}}`
	if string(b) != want {
		t.Errorf("minimal config file:\n got %s\nwant %s", b, want)
	}
	// GET /vm/config as v1.7.0 answers it, nulls included.
	const real = `{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null}`
	var cfg VMConfig
	if err := json.Unmarshal([]byte(real), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.MachineConfig == nil || cfg.MachineConfig.MemSizeMiB != 128 || cfg.Balloon != nil || cfg.BootSource == nil {
		t.Errorf("decoded %+v", cfg)
	}
	full, err := json.Marshal(fullVMConfig())
	if err != nil {
		t.Fatal(err)
	}
	var back VMConfig
	if err := json.Unmarshal(full, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(back)
	if string(again) != string(full) {
		t.Errorf("round trip changed the config:\n%s\n%s", full, again)
	}
	for _, key := range []string{`"boot-source"`, `"machine-config"`, `"network-interfaces"`, `"memory-hotplug"`, `"mmds-config"`, `"cpu-config"`} {
		if !strings.Contains(string(full), key) {
			t.Errorf("config file lacks key %s: %s", key, full)
		}
	}
}

func TestCheckVMConfig(t *testing.T) {
	if err := CheckVMConfig(mustVersion(t, "1.7.0"), minVMConfig()); err != nil {
		t.Errorf("minimal config on v1.7.0: %v", err)
	}
	if err := CheckVMConfig(mustVersion(t, "1.16.1"), fullVMConfig()); err != nil {
		t.Errorf("full config on v1.16.1: %v", err)
	}
	// v1.7.0 boots a config file with an entropy device, although its spec does not list it.
	withEntropy := minVMConfig()
	withEntropy.Entropy = &EntropyDevice{}
	if err := CheckVMConfig(mustVersion(t, "1.7.0"), withEntropy); err != nil {
		t.Errorf("entropy device on v1.7.0: %v", err)
	}
	for _, tc := range []struct {
		version string
		mutate  func(*VMConfig)
		feature string
		since   string
	}{
		{"1.13.2", func(c *VMConfig) { c.Pmem = []Pmem{{ID: "p", PathOnHost: "/p"}} }, `the config file key "pmem"`, "1.14.0"},
		{"1.12.1", func(c *VMConfig) { c.CPUConfig = &CPUConfig{} }, `the config file key "cpu-config"`, "1.13.0"},
		{"1.15.1", func(c *VMConfig) {
			c.NetworkInterfaces = []NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0", MTU: 9000}}
		}, `the config file field "network-interfaces.mtu"`, "1.16.0"},
		{"1.16.1", func(c *VMConfig) { c.MachineConfig.HugePages = HugePagesTransparent }, `the config file field "machine-config.huge_pages" value "Transparent"`, "1.17.0-dev"},
	} {
		cfg := minVMConfig()
		tc.mutate(&cfg)
		err := CheckVMConfig(mustVersion(t, tc.version), cfg)
		var u *UnsupportedError
		if !errors.As(err, &u) || !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("v%s: got %v, want an *UnsupportedError", tc.version, err)
			continue
		}
		if u.Feature != tc.feature || u.Since.String() != tc.since || u.Running.String() != tc.version {
			t.Errorf("v%s: got %+v, want feature %s since %s", tc.version, *u, tc.feature, tc.since)
		}
	}
}

func TestCheckFlags(t *testing.T) {
	for _, args := range [][]string{nil, {"--boot-timer"}, {"--mmds-size-limit", "4096"}} {
		if err := CheckFlags(mustVersion(t, "1.7.0"), args); err != nil {
			t.Errorf("%q on v1.7.0: %v", args, err)
		}
	}
	if err := CheckFlags(mustVersion(t, "1.13.0"), []string{"--enable-pci"}); err != nil {
		t.Errorf("--enable-pci on v1.13.0: %v", err)
	}
	for _, args := range [][]string{{"--enable-pci"}, {"--boot-timer", "--enable-pci=true"}} {
		err := CheckFlags(mustVersion(t, "1.12.1"), args)
		var u *UnsupportedError
		if !errors.As(err, &u) || !errors.Is(err, errors.ErrUnsupported) || u.Since.String() != "1.13.0" ||
			err.Error() != "firecracker v1.12.1 does not support the flag --enable-pci: it needs v1.13.0 or newer" {
			t.Errorf("%q on v1.12.1: %v", args, err)
		}
	}
}

// TestGateRefusesBeforeSending is the acceptance check of the issue: v1.7.0 has no /serial, and
// the client must not send the request.
func TestGateRefusesBeforeSending(t *testing.T) {
	api := newFakeAPI(t, nil)
	c := New(api.sock, WithVersion(mustVersion(t, "1.7.0")))
	defer c.Close()
	err := c.PutSerial(t.Context(), SerialDevice{SerialOutPath: "/run/serial.log"})
	var u *UnsupportedError
	if !errors.As(err, &u) || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("PutSerial on v1.7.0: got %v, want an *UnsupportedError", err)
	}
	if u.Feature != "PUT /serial" || u.Since.String() != "1.14.0" || u.Running.String() != "1.7.0" {
		t.Errorf("got %+v", *u)
	}
	if want := "firecracker v1.7.0 does not support PUT /serial: it needs v1.14.0 or newer"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	if n := len(api.requests()); n != 0 {
		t.Errorf("the server saw %d requests, want none", n)
	}
}

func TestGateFields(t *testing.T) {
	api := newFakeAPI(t, nil)
	for _, tc := range []struct {
		name, version, feature string
		call                   func(c *Client) error
	}{
		{"mtu", "1.15.1", `PUT /network-interfaces/{iface_id} field "mtu"`, func(c *Client) error {
			return c.PutNetworkInterface(t.Context(), NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 1400})
		}},
		{"serial rate limiter", "1.14.2", `PUT /serial field "rate_limiter"`, func(c *Client) error {
			return c.PutSerial(t.Context(), SerialDevice{RateLimiter: bucket(1, 1, 0)})
		}},
		{"transparent huge pages", "1.16.1", `PUT /machine-config field "huge_pages" value "Transparent"`, func(c *Client) error {
			return c.PutMachineConfig(t.Context(), MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: HugePagesTransparent})
		}},
		{"hot-unplug", "1.15.1", "DELETE /drives/{drive_id}", func(c *Client) error { return c.DeleteDrive(t.Context(), "d1") }},
		{"pmem rate limiter nested", "1.14.2", `PUT /pmem/{id} field "rate_limiter"`, func(c *Client) error {
			return c.PutPmem(t.Context(), Pmem{ID: "p", PathOnHost: "/p", RateLimiter: &RateLimiter{Ops: bucket(1, 1, 0)}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api.reset()
			c := New(api.sock, WithVersion(mustVersion(t, tc.version)))
			defer c.Close()
			err := tc.call(c)
			var u *UnsupportedError
			if !errors.As(err, &u) || u.Feature != tc.feature {
				t.Fatalf("got %v, want refusal of %s", err, tc.feature)
			}
			if n := len(api.requests()); n != 0 {
				t.Errorf("the server saw %d requests", n)
			}
		})
	}
	// The same requests without the new fields, or on new enough releases, go through.
	c := New(api.sock, WithVersion(mustVersion(t, "1.15.1")))
	defer c.Close()
	if err := c.PutNetworkInterface(t.Context(), NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}); err != nil {
		t.Error(err)
	}
	if err := c.PutMachineConfig(t.Context(), MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: HugePages2M}); err != nil {
		t.Error(err)
	}
}

// TestGateAsksVersionOnce: with no preset version the client asks GET /version once, and
// only when a request uses a gated feature.
func TestGateAsksVersionOnce(t *testing.T) {
	api := newFakeAPI(t, nil) // answers 1.14.2
	c := New(api.sock)
	defer c.Close()
	ctx := t.Context()
	if _, err := c.GetInstanceInfo(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128}); err != nil {
		t.Fatal(err)
	}
	if got := paths(api.requests()); got != "GET /,PUT /machine-config" {
		t.Fatalf("ungated requests sent %s", got)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = c.PutSerial(ctx, SerialDevice{SerialOutPath: "/s"}) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 1400})
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("mtu on 1.14.2: %v", err)
	}
	n := 0
	for _, r := range api.requests() {
		if r.Path == "/version" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("GET /version sent %d times, want 1", n)
	}
	if v, err := c.Version(ctx); err != nil || v.String() != "1.14.2" {
		t.Errorf("Version = %v, %v", v, err)
	}
}

func TestGateVersionError(t *testing.T) {
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		writeFault(w, http.StatusBadRequest, "no version for you")
	})
	c := New(api.sock)
	defer c.Close()
	err := c.PutSerial(t.Context(), SerialDevice{})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Path != "/version" || !strings.Contains(err.Error(), "version gate") {
		t.Fatalf("got %v", err)
	}
	if got := paths(api.requests()); got != "GET /version" {
		t.Errorf("sent %s", got)
	}
}

func paths(rs []recorded) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Method+" "+r.Path)
	}
	return strings.Join(s, ",")
}

// TestLoadSnapshotDeprecatedForms: track_dirty_pages goes out as enable_diff_snapshots before
// v1.13, and, where a release lacked mem_backend, a File backend goes out as mem_file_path.
func TestLoadSnapshotDeprecatedForms(t *testing.T) {
	api := newFakeAPI(t, nil)
	p := SnapshotLoadParams{SnapshotPath: "/s", MemBackend: MemoryBackend{BackendType: MemBackendFile, BackendPath: "/m"}, TrackDirtyPages: true}
	body := func(c *Client) string {
		t.Helper()
		api.reset()
		if err := c.LoadSnapshot(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		return string(api.requests()[0].Body)
	}
	old := New(api.sock, WithVersion(mustVersion(t, "1.12.1")))
	defer old.Close()
	if got, want := body(old), `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"enable_diff_snapshots":true}`; got != want {
		t.Errorf("v1.12.1 body\n got %s\nwant %s", got, want)
	}
	cur := New(api.sock, WithVersion(mustVersion(t, "1.13.0")))
	defer cur.Close()
	if got, want := body(cur), `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"track_dirty_pages":true}`; got != want {
		t.Errorf("v1.13.0 body\n got %s\nwant %s", got, want)
	}
	// An unknown version is asked for only when the translation depends on it.
	ask := New(api.sock)
	defer ask.Close()
	body(ask)
	if got := paths(api.requests()); got != "GET /version,PUT /snapshot/load" {
		t.Errorf("sent %s", got)
	}
	p.TrackDirtyPages = false
	fresh := New(api.sock)
	defer fresh.Close()
	body(fresh)
	if got := paths(api.requests()); got != "PUT /snapshot/load" {
		t.Errorf("sent %s", got)
	}

	// Every supported release has mem_backend; a table where one lacks it makes the client
	// fall back to mem_file_path for a File backend and refuse a Uffd one.
	synthetic := newFeatureTable([]feature{{op: opSnapshotLoad, field: "mem_backend", since: Version{Major: 1, Minor: 2}}})
	ancient := New(api.sock, WithVersion(Version{Major: 1, Minor: 1}))
	ancient.features = synthetic
	defer ancient.Close()
	p.TrackDirtyPages = false
	if got, want := body(ancient), `{"snapshot_path":"/s","mem_file_path":"/m"}`; got != want {
		t.Errorf("mem_file_path fallback\n got %s\nwant %s", got, want)
	}
	api.reset()
	p.MemBackend.BackendType = MemBackendUffd
	err := ancient.LoadSnapshot(t.Context(), p)
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "Uffd") {
		t.Errorf("Uffd without mem_backend: %v", err)
	}
	if len(api.requests()) != 0 {
		t.Error("a refused load was sent")
	}
}

// TestFeatureTableFileIsGenerated guards against a hand edit: the file carries the generator's
// header.
func TestFeatureTableFileIsGenerated(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(".", featuresFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "// Code generated by ") {
		t.Errorf("%s lacks its generated-code header", featuresFile)
	}
}
