package smartvm

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// staticBinary is a static executable that stands in for smartvm-agent (installing it only
// copies bytes).
const staticBinary = "/bin/busybox"

// ext4Image makes a small ext4 image file.
func ext4Image(t *testing.T) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/sbin/mkfs.ext4"
	}
	p := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", p).CombinedOutput(); err != nil {
		t.Skipf("needs mkfs.ext4 (e2fsprogs): %v %s", err, out)
	}
	return p
}

func debugfsCatImage(t *testing.T, image, path string) string {
	t.Helper()
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		debugfs = "/sbin/debugfs"
	}
	out, err := exec.Command(debugfs, "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// TestStartInstallsAgent installs the agent into the staged copy of the root drive only.
func TestStartInstallsAgent(t *testing.T) {
	if err := checkAgentBinary(staticBinary); err != nil {
		t.Skipf("needs a static executable to install (apt-get install busybox-static): %v", err)
	}
	mgr, _, kernel := fakeSetup(t, WithAgentBinary(staticBinary))
	rootfs := ext4Image(t)
	before, err := os.ReadFile(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	spec := MachineSpec{Kernel: kernel, BootArgs: testguest.BootArgs(testguest.ModeHalt), MemoryMiB: 32,
		Drives: []DriveSpec{{Path: rootfs, Root: true}}, Agent: true}
	m := start(t, mgr, spec)
	staged := filepath.Join(m.Dir(), "drives", "rootfs.img")
	want, err := os.ReadFile(staticBinary)
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfsCatImage(t, staged, "/usr/local/bin/smartvm-agent"); got != string(want) {
		t.Errorf("the staged root drive has %d bytes at /usr/local/bin/smartvm-agent, want the %d of %s", len(got), len(want), staticBinary)
	}
	after, err := os.ReadFile(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("the original root drive was changed")
	}
}

func TestStartAgentRefusals(t *testing.T) {
	rootfs := ext4Image(t)
	for _, tc := range []struct {
		name   string
		drives []DriveSpec
		opts   []Option
		want   string
	}{
		{"persistent root", []DriveSpec{{Path: rootfs, Root: true, Persistent: true}}, []Option{WithAgentBinary(staticBinary)}, "only into an ephemeral (staged) root drive"},
		{"no root drive", nil, []Option{WithAgentBinary(staticBinary)}, "there is none"},
		{"no agent binary", []DriveSpec{{Path: rootfs, Root: true}}, nil, "pass WithAgentBinary"},
		{"dynamic agent binary", []DriveSpec{{Path: rootfs, Root: true}}, []Option{WithAgentBinary("/bin/sh")}, "dynamically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "dynamic agent binary" && checkAgentBinary("/bin/sh") == nil {
				t.Skip("/bin/sh is static here")
			}
			mgr, _, kernel := fakeSetup(t, tc.opts...)
			spec := MachineSpec{Kernel: kernel, BootArgs: testguest.BootArgs(testguest.ModeHalt), MemoryMiB: 32, Agent: true}
			spec.Drives = tc.drives
			if tc.drives == nil {
				spec.Initrd = rootfs // a boot source without a root drive
			}
			_, err := mgr.Start(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestAgentNetworkMMDS: a VM with the agent and a managed network (no ip= argument) gets MMDS
// turned on with its network under MMDSNetworkKey, merged with the spec's own data, in both
// boot modes (PUT /mmds, and --metadata), and the kernel argument naming the service.
func TestAgentNetworkMMDS(t *testing.T) {
	if err := checkAgentBinary(staticBinary); err != nil {
		t.Skipf("needs a static executable to install (apt-get install busybox-static): %v", err)
	}
	bothModes(t, func(t *testing.T, mode BootMode) {
		testutil.CheckLeaks(t)
		enterTestNetns(t)
		kernel := guestKernel(t)
		mgr := newManager(t, testRoot(t), testutil.Link(t, "firecracker"), WithNetnsDir(t.TempDir()), WithAgentBinary(staticBinary))
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.BootMode = mode
		spec.Drives = []DriveSpec{{Path: ext4Image(t), Root: true}}
		spec.Agent = true
		spec.Network = &NetworkSpec{}
		wantDNS := ""
		if mode == BootModeConfigFile {
			// The spec's data: kept, and its fields of the key win.
			spec.MMDS = &MMDSSpec{IPv4Address: "169.254.170.2", Data: json.RawMessage(`{"latest":{"id":"x"},"smartvm":{"network":{"dns":"172.16.0.1"}}}`)}
			wantDNS = "172.16.0.1"
		}
		m := start(t, mgr, spec)
		var store struct {
			Latest  map[string]string `json:"latest"`
			SmartVM struct {
				Network agentwire.MMDSNetwork `json:"network"`
			} `json:"smartvm"`
		}
		if err := m.Client().GetMMDS(context.Background(), &store); err != nil {
			t.Fatal(err)
		}
		want := agentwire.MMDSNetwork{Address: "172.16.0.2/30", Gateway: "172.16.0.1", Hostname: m.Name(), Device: "eth0", DNS: wantDNS}
		if store.SmartVM.Network != want {
			t.Errorf("mmds network %+v, want %+v", store.SmartVM.Network, want)
		}
		mmdsAddr := agentwire.MMDSDefaultAddr
		if spec.MMDS != nil {
			mmdsAddr = spec.MMDS.IPv4Address
			if store.Latest["id"] != "x" {
				t.Errorf("the spec's mmds data was lost: %+v", store)
			}
		}
		if _, bootArgs := vmConfigOf(t, m); !strings.Contains(bootArgs, " smartvm.mmds="+mmdsAddr) {
			t.Errorf("boot args %q lack smartvm.mmds=%s", bootArgs, mmdsAddr)
		}
		if got := m.Spec().MMDS; got == nil || got.Version != fcapi.MMDSv2 || len(got.Interfaces) != 1 {
			t.Errorf("mmds spec %+v", got)
		}
	})
}

// TestAgentMMDSSpec: only the agent with a managed network and no ip= argument turns MMDS on,
// and then its data must be a JSON object.
func TestAgentMMDSSpec(t *testing.T) {
	for _, tc := range []struct {
		spec MachineSpec
		mmds bool
	}{
		{MachineSpec{Agent: true, Network: &NetworkSpec{}}, true},
		{MachineSpec{Agent: true, Network: &NetworkSpec{KernelIPArg: true}}, false},
		{MachineSpec{Agent: true}, false},
		{MachineSpec{Network: &NetworkSpec{}}, false},
	} {
		if got := tc.spec.WithDefaults(); (got.MMDS != nil) != tc.mmds || (got.mmdsBootArg() != "") != tc.mmds {
			t.Errorf("%+v: mmds %+v, boot arg %q", tc.spec, got.MMDS, got.mmdsBootArg())
		}
	}
	spec := MachineSpec{Agent: true, Network: &NetworkSpec{}, MMDS: &MMDSSpec{Data: json.RawMessage(`[1]`)}}.WithDefaults()
	if err := spec.Validate(); err == nil || !strings.Contains(err.Error(), "needs the data to be a JSON object") {
		t.Errorf("Validate with array data: %v", err)
	}
}
