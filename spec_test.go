package smartvm

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/netdev"
)

// specFiles creates a kernel and two drive images in a temporary directory.
func specFiles(t *testing.T) (dir, kernel, rootfs, data string) {
	t.Helper()
	dir = t.TempDir()
	kernel, rootfs, data = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "data.img")
	for _, p := range []string{kernel, rootfs, data} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, kernel, rootfs, data
}

func TestWithDefaults(t *testing.T) {
	t.Parallel()
	got := MachineSpec{
		Drives:     []DriveSpec{{Path: "r", Root: true}, {Path: "a"}, {ID: "named", Path: "b"}},
		Interfaces: []InterfaceSpec{{TAP: "tap0"}, {TAP: "tap1"}},
		MMDS:       &MMDSSpec{},
	}.WithDefaults()
	want := MachineSpec{
		BootArgs:   DefaultBootArgs,
		VCPUs:      1,
		MemoryMiB:  512,
		LogLevel:   fcapi.LogInfo,
		BootMode:   BootModeAPI,
		Drives:     []DriveSpec{{ID: "rootfs", Path: "r", Root: true}, {ID: "drive1", Path: "a"}, {ID: "named", Path: "b"}},
		Interfaces: []InterfaceSpec{{ID: "eth0", TAP: "tap0"}, {ID: "eth1", TAP: "tap1"}},
		MMDS:       &MMDSSpec{Version: fcapi.MMDSv2, Interfaces: []string{"eth0", "eth1"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WithDefaults (-want +got):\n%s", diff)
	}
	// A network gets one NIC, IDs after the static interfaces' and the default pool; MMDS
	// reaches every interface.
	got = MachineSpec{Interfaces: []InterfaceSpec{{TAP: "tap0"}}, Network: &NetworkSpec{NICs: []NICSpec{{ID: "x"}, {}}}, MMDS: &MMDSSpec{}}.WithDefaults()
	if n := got.Network; len(n.NICs) != 2 || n.NICs[0].ID != "x" || n.NICs[1].ID != "eth2" || n.Pool != "172.16.0.0/16" ||
		!slices.Equal(got.MMDS.Interfaces, []string{"eth0", "x", "eth2"}) {
		t.Errorf("network defaults: %+v, mmds %+v", n, got.MMDS)
	}
	if n := (MachineSpec{Network: &NetworkSpec{}}).WithDefaults().Network; len(n.NICs) != 1 || n.NICs[0].ID != "eth0" {
		t.Errorf("default network %+v", n)
	}
	// A base image brings its own boot args; the spec's default must not override them.
	if b := (MachineSpec{BaseImagePreset: "latest"}).WithDefaults().BootArgs; b != "" {
		t.Errorf("base-image spec got boot args %q", b)
	}
}

func TestWithDefaultsDoesNotAlias(t *testing.T) {
	t.Parallel()
	in := MachineSpec{Drives: []DriveSpec{{Path: "a"}}, MMDS: &MMDSSpec{}, Network: &NetworkSpec{NICs: []NICSpec{{}}}}
	_ = in.WithDefaults()
	if in.Drives[0].ID != "" || in.MMDS.Version != "" || in.Network.Pool != "" || in.Network.NICs[0].ID != "" {
		t.Fatalf("WithDefaults changed its receiver: %+v", in)
	}
}

func TestValidateGood(t *testing.T) {
	t.Parallel()
	_, kernel, rootfs, data := specFiles(t)
	specs := map[string]MachineSpec{
		"minimal":    {Kernel: kernel},
		"base image": {BaseImagePreset: "lts", Drives: []DriveSpec{{Path: data}}},
		"full": {
			Name: "web-1", Kernel: kernel, Initrd: data, BootArgs: "console=ttyS0", VCPUs: 32, MemoryMiB: 2048,
			Drives: []DriveSpec{
				{ID: "root_fs", Path: rootfs, Root: true, PartUUID: "abc", CacheType: fcapi.CacheWriteback, IOEngine: fcapi.IOEngineAsync},
				{Path: data, ReadOnly: true},
				{Path: data, Persistent: true},
			},
			Interfaces: []InterfaceSpec{{TAP: "fc-tap0", MAC: "06:00:AC:10:00:02", MTU: 1500}, {ID: "net_2", TAP: "tap2"}},
			Vsock:      &VsockSpec{CID: 3},
			MMDS:       &MMDSSpec{Version: fcapi.MMDSv1, Interfaces: []string{"net_2"}, IPv4Address: "169.254.170.2", Data: json.RawMessage(`{"a":1}`)},
			Balloon:    &BalloonSpec{AmountMiB: 2048, StatsPollingIntervalS: 1},
			Entropy:    &EntropySpec{},
			LogLevel:   "warn", Metrics: true, BootMode: BootModeConfigFile, EnablePCI: true,
			ExtraArgs: []string{"--boot-timer", "--mmds-size-limit", "102400"},
		},
		"network": {
			Kernel: kernel, SerialInput: true, Interfaces: []InterfaceSpec{{TAP: "tap9"}},
			Network: &NetworkSpec{NICs: []NICSpec{{}, {ID: "data"}}, NAT: true, Uplink: "eth0", Pool: "10.10.0.0/24", KernelIPArg: true, MTU: 9000},
			MMDS:    &MMDSSpec{Interfaces: []string{"data"}},
		},
		"namespace": {Kernel: kernel, Network: &NetworkSpec{Namespace: true, Pool: "10.0.0.0/29"}},
	}
	for name, s := range specs {
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateProblems(t *testing.T) {
	t.Parallel()
	dir, kernel, rootfs, data := specFiles(t)
	unreadable := filepath.Join(dir, "unreadable")
	os.WriteFile(unreadable, nil, 0)
	existing := filepath.Join(dir, "exists.sock")
	os.WriteFile(existing, nil, 0o600)
	ok := MachineSpec{Kernel: kernel}
	with := func(f func(*MachineSpec)) MachineSpec { s := ok; f(&s); return s }

	tests := []struct {
		name string
		spec MachineSpec
		want []string // substrings, one per expected problem
	}{
		{"bad name", with(func(s *MachineSpec) { s.Name = "web_1" }), []string{`name "web_1"`}},
		{"long name", with(func(s *MachineSpec) { s.Name = strings.Repeat("a", 65) }), []string{"1 to 64"}},
		{"no kernel", MachineSpec{}, []string{"kernel: required"}},
		{"missing kernel", with(func(s *MachineSpec) { s.Kernel = filepath.Join(dir, "nope") }), []string{"kernel: stat"}},
		{"kernel is dir", with(func(s *MachineSpec) { s.Kernel = dir }), []string{"is a directory"}},
		{"missing initrd", with(func(s *MachineSpec) { s.Initrd = filepath.Join(dir, "nope") }), []string{"initrd:"}},
		{"zero-ish vcpus", with(func(s *MachineSpec) { s.VCPUs = -1 }), []string{"vcpus -1"}},
		{"absurd vcpus", with(func(s *MachineSpec) { s.VCPUs = 33 }), []string{"vcpus 33"}},
		{"absurd memory", with(func(s *MachineSpec) { s.MemoryMiB = 2 << 20 }), []string{"memory_mib"}},
		{"negative memory", with(func(s *MachineSpec) { s.MemoryMiB = -5 }), []string{"memory_mib -5"}},
		{"smt with odd vcpus", with(func(s *MachineSpec) { s.SMT, s.VCPUs = true, 3 }), []string{"vcpus 3: with smt"}},
		{"huge pages", with(func(s *MachineSpec) { s.HugePages, s.MemoryMiB = fcapi.HugePages2M, 33 }), []string{"memory_mib 33: with 2M huge pages"}},
		{"unknown huge pages", with(func(s *MachineSpec) { s.HugePages = "1G" }), []string{`huge_pages "1G"`}},
		{"unknown cpu template", with(func(s *MachineSpec) { s.CPUTemplate = "T3" }), []string{`cpu_template "T3"`}},
		{"bad labels", with(func(s *MachineSpec) {
			s.Labels = map[string]string{"": "x", "a=b": "c", "ok": "fine", "sp ace": "", "ctl": "a\nb", "big": strings.Repeat("v", MaxLabelValue+1)}
		}), []string{`label ""`, `label "a=b"`, `label "sp ace"`, `label "ctl": use UTF-8 text`, `label "big": the value is 4097 bytes`}},
		{"two roots", with(func(s *MachineSpec) {
			s.Drives = []DriveSpec{{ID: "a", Path: rootfs, Root: true}, {ID: "b", Path: data, Root: true}}
		}), []string{"second root drive"}},
		{"bad drive id", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{ID: "root-fs", Path: rootfs}} }), []string{`drive "root-fs": use ASCII letters, digits and '_' for IDs`}},
		{"duplicate drive id", with(func(s *MachineSpec) {
			s.Drives = []DriveSpec{{ID: "d", Path: rootfs}, {ID: "d", Path: data}}
		}), []string{"used twice"}},
		{"default id collides", with(func(s *MachineSpec) {
			s.Drives = []DriveSpec{{ID: "drive1", Path: rootfs}, {Path: data}}
		}), []string{`drive "drive1": the ID is used twice`}},
		{"drive without path", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{}} }), []string{"path is required"}},
		{"missing drive", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{Path: filepath.Join(dir, "nope")}} }), []string{"drive0"}},
		{"two writers", with(func(s *MachineSpec) {
			s.Drives = []DriveSpec{{Path: data, Persistent: true}, {Path: data, Persistent: true}}
		}), []string{"two writers"}},
		{"partuuid off root", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{Path: data, PartUUID: "x"}} }), []string{"partuuid"}},
		{"cache and engine", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{Path: data, CacheType: "Fast", IOEngine: "uring"}} }),
			[]string{"cache_type", "io_engine"}},
		{"bad iface", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{ID: "eth-0", TAP: "a/b", MAC: "01:00:00:00:00:01", MTU: 20}}
		}), []string{`interface "eth-0": use ASCII letters`, "not a valid device name", "multicast", "mtu 20"}},
		{"iface duplicates", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{TAP: "t", MAC: "06:00:00:00:00:01"}, {TAP: "t", MAC: "06:00:00:00:00:01"}}
		}), []string{"tap t is used twice", "used twice"}},
		{"iface no tap, bad mac", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{MAC: "zz"}, {TAP: strings.Repeat("t", 16)}}
		}), []string{"tap is required", "not a MAC", "not a valid device name"}},
		{"vsock", with(func(s *MachineSpec) { s.Vsock = &VsockSpec{CID: 2, Path: existing} }), []string{"cid 2", "exists"}},
		{"mmds", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{TAP: "t"}}
			s.MMDS = &MMDSSpec{Version: "V3", Interfaces: []string{"eth9"}, IPv4Address: "10.0.0.1", Data: json.RawMessage("{")}
		}), []string{"version", "eth9", "link-local", "not valid JSON"}},
		{"mmds without interfaces", with(func(s *MachineSpec) { s.MMDS = &MMDSSpec{} }), []string{"needs a network interface"}},
		{"balloon", with(func(s *MachineSpec) { s.Balloon = &BalloonSpec{AmountMiB: 513, StatsPollingIntervalS: -1} }),
			[]string{"amount_mib 513", "stats_polling"}},
		{"log level", with(func(s *MachineSpec) { s.LogLevel = "loud" }), []string{"log_level"}},
		{"boot mode", with(func(s *MachineSpec) { s.BootMode = "pxe" }), []string{"boot_mode"}},
		{"managed flags", with(func(s *MachineSpec) { s.ExtraArgs = []string{"--api-sock", "/x", "--no-api", "--level=Debug"} }),
			[]string{"--api-sock", "--no-api", "--level"}},
		{"two images", MachineSpec{BaseImagePreset: "latest", BaseImageManifestURL: "https://x/m.json"}, []string{"only one"}},
		{"image and kernel", with(func(s *MachineSpec) { s.BaseImagePreset = "latest" }), []string{"both set"}},
		{"image and root", MachineSpec{BaseImagePreset: "latest", Drives: []DriveSpec{{Path: rootfs, Root: true}}}, []string{"brings the root drive"}},
		{"image and rootfs id", MachineSpec{BaseImagePreset: "latest", Drives: []DriveSpec{{ID: "rootfs", Path: data}}}, []string{`"rootfs" is the base image's root drive`}},
		{"bad preset", MachineSpec{BaseImagePreset: "newest"}, []string{"latest or lts"}},
		{"bad manifest url", MachineSpec{BaseImageManifestURL: "ftp://x"}, []string{"http or https"}},
		{"missing manifest", MachineSpec{BaseImageManifestPath: filepath.Join(dir, "nope.json")}, []string{"base_image_manifest_path"}},
		{"network pool", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Pool: "172.16.0.0"} }), []string{`network pool "172.16.0.0"`}},
		{"network pool v6", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Pool: "fd00::/64"} }), []string{"IPv4 network"}},
		{"network pool too small", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Pool: "10.0.0.0/31"} }), []string{"/30 or larger"}},
		{"network pool host bits", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Pool: "10.0.0.1/24"} }), []string{"did you mean 10.0.0.0/24"}},
		{"network pool capacity", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Pool: "10.0.0.0/30", Namespace: true} }),
			[]string{"holds 1 /30s, and this vm needs 2"}},
		{"network nics", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{TAP: "t"}}
			s.Network = &NetworkSpec{NICs: []NICSpec{{ID: "eth0"}, {ID: "e-1"}}, MTU: 70000} // eth0 is the interface's
		}), []string{`network nic "eth0": the ID is used twice`, `network nic "e-1": use ASCII`, "network mtu 70000"}},
		{"too many nics", with(func(s *MachineSpec) { s.Network = &NetworkSpec{NICs: make([]NICSpec, MaxNICs+1)} }), []string{"at most 8"}},
		{"uplink without nat", with(func(s *MachineSpec) { s.Network = &NetworkSpec{Uplink: "eth0"} }), []string{"set nat too"}},
		{"bad uplink", with(func(s *MachineSpec) { s.Network = &NetworkSpec{NAT: true, Uplink: "a/b"} }), []string{"not a valid device name"}},
		{"namespace and taps", with(func(s *MachineSpec) {
			s.Interfaces = []InterfaceSpec{{TAP: "t"}}
			s.Network = &NetworkSpec{Namespace: true}
		}), []string{"use network.nics instead"}},
		{"flag-like name", with(func(s *MachineSpec) { s.Name = "--help" }), []string{`starts with '-'`}},
		{"dash name", with(func(s *MachineSpec) { s.Name = "-x" }), []string{`starts with '-'`}},
		{"control character in boot args", with(func(s *MachineSpec) { s.BootArgs = "console=ttyS0\ninit=/bin/sh" }), []string{`control character '\n' at byte 13`}},
		{"ephemeral device", with(func(s *MachineSpec) { s.Drives = []DriveSpec{{Path: os.DevNull}} }), []string{"set persistent"}},
	}
	if os.Geteuid() != 0 { // root reads anything
		tests = append(tests, struct {
			name string
			spec MachineSpec
			want []string
		}{"unreadable kernel", with(func(s *MachineSpec) { s.Kernel = unreadable }), []string{"permission denied"}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.spec.Validate()
			if err == nil {
				t.Fatal("valid, want problems")
			}
			var joined interface{ Unwrap() []error }
			n := 1
			if errors.As(err, &joined) {
				n = len(joined.Unwrap())
			}
			if n != len(tc.want) {
				t.Errorf("%d problems, want %d:\n%v", n, len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestValidateFor(t *testing.T) {
	t.Parallel()
	_, kernel, _, _ := specFiles(t)
	s := MachineSpec{Name: strings.Repeat("a", 64), Kernel: kernel, Vsock: &VsockSpec{CID: 3}}
	if err := s.ValidateFor("/dev/shm/.smartvm/runtime"); err != nil {
		t.Errorf("default root, longest name: %v", err)
	}
	long := "/" + strings.Repeat("r", 40)
	err := s.ValidateFor(long)
	if err == nil || !strings.Contains(err.Error(), "api socket path") || !strings.Contains(err.Error(), "vsock socket path") {
		t.Errorf("long root: %v", err)
	}
	if err := (MachineSpec{Kernel: kernel}).ValidateFor(long); err != nil {
		t.Errorf("long root, generated name: %v", err)
	}
}

func TestDriveSpecJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    DriveSpec
		wantErr bool
	}{
		{`{"path":"a"}`, DriveSpec{Path: "a"}, false},
		{`{"path":"a","ephemeral":false}`, DriveSpec{Path: "a", Persistent: true}, false},
		{`{"path":"a","ephemeral":true}`, DriveSpec{Path: "a"}, false},
		{`{"path":"a","persistent":true,"ephemeral":false}`, DriveSpec{Path: "a", Persistent: true}, false},
		{`{"path":"a","persistent":true,"ephemeral":true}`, DriveSpec{}, true},
		{`{"path":"a","root":true,"rate_limiter":{"ops":{"size":1,"refill_time":2}}}`,
			DriveSpec{Path: "a", Root: true, RateLimiter: &fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 1, RefillTime: 2}}}, false},
		{`{"path":1}`, DriveSpec{}, true},
	}
	for _, tc := range tests {
		var got DriveSpec
		err := json.Unmarshal([]byte(tc.in), &got)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: error %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); !tc.wantErr && diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.in, diff)
		}
	}
	if !(DriveSpec{}).Ephemeral() || (DriveSpec{ReadOnly: true}).Ephemeral() || (DriveSpec{Persistent: true}).Ephemeral() {
		t.Error("Ephemeral() is wrong")
	}
}

// TestSpecJSONRoundTrip checks that a spec survives state.json.
func TestSpecJSONRoundTrip(t *testing.T) {
	t.Parallel()
	in := MachineSpec{
		Name: "vm1", Kernel: "k", VCPUs: 2,
		Drives:     []DriveSpec{{ID: "rootfs", Path: "r", Root: true, Persistent: true}},
		Interfaces: []InterfaceSpec{{ID: "eth0", TAP: "tap0", MTU: 1400}},
		MMDS:       &MMDSSpec{Data: json.RawMessage(`{"k":"v"}`)},
		BootMode:   BootModeConfigFile,
		ExtraArgs:  []string{"--boot-timer"},
		Labels:     map[string]string{"team": "infra", "empty": ""},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out MachineSpec
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("round trip (-in +out):\n%s", diff)
	}
}

func TestAPIPayloadLimit(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, fcapi.DefaultMaxPayload},
		{[]string{"--boot-timer"}, fcapi.DefaultMaxPayload},
		{[]string{"--http-api-max-payload-size", "1048576"}, 1 << 20},
		{[]string{"--boot-timer", "--http-api-max-payload-size=65536"}, 65536},
		{[]string{"--http-api-max-payload-size"}, fcapi.DefaultMaxPayload},
		{[]string{"--http-api-max-payload-size", "lots"}, fcapi.DefaultMaxPayload},
	} {
		if got := (MachineSpec{ExtraArgs: tc.args}).apiPayloadLimit(); got != tc.want {
			t.Errorf("%q: %d, want %d", tc.args, got, tc.want)
		}
	}
}

// TestAgentMainBootArg: a spec with AgentMain boots with the argument that makes the agent
// wait for its main process, after the image's or the spec's own arguments.
func TestAgentMainBootArg(t *testing.T) {
	for _, tc := range []struct {
		spec MachineSpec
		want string
	}{
		{MachineSpec{Kernel: "/k", BootArgs: "console=ttyS0 init=/sbin/smartvm-agent", AgentMain: true}, "console=ttyS0 init=/sbin/smartvm-agent " + AgentMainBootArg},
		{MachineSpec{Kernel: "/k", BootArgs: "console=ttyS0"}, "console=ttyS0"},
	} {
		s := &starter{spec: tc.spec}
		if got := s.vmConfig(nil).BootSource.BootArgs; got != tc.want {
			t.Errorf("boot args %q, want %q", got, tc.want)
		}
	}
}

// TestValidNameMatchesPattern checks the name and ID loops against the patterns they replace.
func TestValidNameMatchesPattern(t *testing.T) {
	nameRE := regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	idRE := regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	cases := []string{"", "a", "-", "_", "vm-1", "vm_1", "VM9", "a b", "a\n", "\na", "é", "a.b", "a/b",
		strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("_", 65), "a\x00"}
	for c := byte(0); c < 0x80; c++ {
		cases = append(cases, "x"+string(c))
	}
	for _, s := range cases {
		if got, want := validName(s), nameRE.MatchString(s); got != want {
			t.Errorf("validName(%q) = %v, want %v", s, got, want)
		}
		if got, want := validResourceID(s), idRE.MatchString(s); got != want {
			t.Errorf("validResourceID(%q) = %v, want %v", s, got, want)
		}
	}
}

// A VM name may end in '-', a host name may not: the guest gets the name without it, the same
// in MMDS and for a main command, and every VM name gives a host name the agent accepts.
func TestGuestHostname(t *testing.T) {
	for name, want := range map[string]string{"web": "web", "web-": "web", "a--": "a", "a-b": "a-b", strings.Repeat("x", 64): strings.Repeat("x", 64)} {
		if !validVMName(name) {
			t.Fatalf("%q is not a vm name", name)
		}
		s := &starter{
			spec: MachineSpec{Name: name, Agent: true, Network: &NetworkSpec{}, MMDS: &MMDSSpec{}},
			net:  &netdev.Network{NICs: []netdev.NIC{{Subnet: netip.MustParsePrefix("172.16.0.0/30"), HostIP: netip.MustParseAddr("172.16.0.1"), GuestIP: netip.MustParseAddr("172.16.0.2")}}},
		}
		b, err := s.mmdsData()
		if err != nil {
			t.Fatal(err)
		}
		var store struct {
			SmartVM struct {
				Network agentwire.MMDSNetwork `json:"network"`
			} `json:"smartvm"`
		}
		if err := json.Unmarshal(b, &store); err != nil {
			t.Fatal(err)
		}
		if got := store.SmartVM.Network.Hostname; got != want {
			t.Errorf("vm %q: MMDS host name %q, want %q", name, got, want)
		}
		if got := (&Machine{name: name}).MainCommand(t.Context(), "true").Hostname; got != want {
			t.Errorf("vm %q: main command's host name %q, want %q", name, got, want)
		}
		if err := (&agentwire.MainStart{Cmd: []string{"true"}, Hostname: want}).Check(); err != nil {
			t.Errorf("vm %q: the agent refuses its host name: %v", name, err)
		}
	}
}
