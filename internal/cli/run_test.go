package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
)

func TestParseDrive(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want smartvm.DriveSpec
		err  string
	}{
		{"/d.img", smartvm.DriveSpec{Path: "/d.img"}, ""},
		{"/d.img:ro", smartvm.DriveSpec{Path: "/d.img", ReadOnly: true}, ""},
		{"/d.img:persistent", smartvm.DriveSpec{Path: "/d.img", Persistent: true}, ""},
		{"/a:b.img:persistent", smartvm.DriveSpec{Path: "/a:b.img", Persistent: true}, ""},
		{"/d.img:ro:persistent", smartvm.DriveSpec{}, "means nothing with :ro"},
		{":ro", smartvm.DriveSpec{}, "--drive needs a path"},
	} {
		got, err := parseDrive(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseDrive(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseDrive(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestPlanRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	manifest := filepath.Join(dir, "m.json")
	if err := os.WriteFile(manifest, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	metadata := filepath.Join(dir, "meta.json")
	specFile := filepath.Join(dir, "spec.json")
	typoFile := filepath.Join(dir, "typo.json")
	for path, content := range map[string]string{
		metadata:          `{"k":"v"}`,
		manifest + ".bad": `{"k":`,
		specFile: `{"name": "from-file", "kernel": "vmlinux", "vcpus": 2, "memory_mib": 256, "boot_mode": "config-file",
			"labels": {"from": "file"}, "drives": [{"path": "root.ext4", "root": true}, {"path": "/abs/data.img", "read_only": true}]}`,
		typoFile: `{"vcpu": 2}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	defaults := runFlags{cpus: 1, memory: 512, bootMode: "api", serialLogMiB: 64}
	with := func(edit func(*runFlags)) runFlags {
		f := defaults
		edit(&f)
		return f
	}
	for _, tc := range []struct {
		name  string
		flags runFlags
		env   cliEnv
		check func(t *testing.T, p runPlan)
		usage string
	}{
		{"default preset", defaults, cliEnv{}, func(t *testing.T, p runPlan) {
			if p.Spec.BaseImagePreset != "latest" || !p.GeneratedName || p.Spec.Name == "" {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"env manifest", defaults, cliEnv{envBaseImageManifest: "https://example.com/m.json"}, func(t *testing.T, p runPlan) {
			if p.Spec.BaseImageManifestURL != "https://example.com/m.json" {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"hello", with(func(f *runFlags) { f.image = "hello"; f.name = "h" }), cliEnv{}, func(t *testing.T, p runPlan) {
			if !p.Hello || p.Spec.BootArgs != testguest.BootArgs("hello") || p.Spec.Name != "h" || p.GeneratedName {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"hello boot args", with(func(f *runFlags) { f.image = "hello"; f.bootArgs = "smartvm.test=halt" }), cliEnv{}, func(t *testing.T, p runPlan) {
			if p.Spec.BootArgs != "smartvm.test=halt" {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"lts", with(func(f *runFlags) { f.image = "lts" }), cliEnv{envBaseImagePreset: "latest"}, func(t *testing.T, p runPlan) {
			if p.Spec.BaseImagePreset != "lts" {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"manifest file", with(func(f *runFlags) { f.image = manifest }), cliEnv{}, func(t *testing.T, p runPlan) {
			if p.Spec.BaseImageManifestPath != manifest {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"oci image", with(func(f *runFlags) { f.image = "alpine:3.20" }), cliEnv{envBaseImagePreset: "latest"}, func(t *testing.T, p runPlan) {
			if p.Spec.BaseImageOCI != "alpine:3.20" || p.Spec.BaseImagePreset != "" {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"kernel", with(func(f *runFlags) {
			f.kernel, f.rootfs, f.persistentRootfs, f.drives = "k", "r", true, []string{"d:ro"}
			f.cpus, f.memory, f.bootMode, f.enablePCI = 2, 256, "config-file", true
		}), cliEnv{}, func(t *testing.T, p runPlan) {
			s := p.Spec
			if !filepath.IsAbs(s.Kernel) || len(s.Drives) != 2 || !s.Drives[0].Root || !s.Drives[0].Persistent || !s.Drives[1].ReadOnly ||
				s.VCPUs != 2 || s.MemoryMiB != 256 || s.BootMode != smartvm.BootModeConfigFile || !s.EnablePCI {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"console input", defaults, cliEnv{}, func(t *testing.T, p runPlan) {
			if !p.Spec.SerialInput || p.Spec.Network != nil {
				t.Errorf("plan %+v", p)
			}
		}, ""},
		{"net", with(func(f *runFlags) { f.net = true }), cliEnv{}, func(t *testing.T, p runPlan) {
			if n := p.Spec.Network; n == nil || !n.NAT || n.Namespace || n.KernelIPArg || len(n.NICs) != 0 {
				t.Errorf("network %+v", n)
			}
		}, ""},
		{"net without nat", with(func(f *runFlags) { f.net, f.noNAT = true, true }), cliEnv{}, func(t *testing.T, p runPlan) {
			if n := p.Spec.Network; n == nil || n.NAT {
				t.Errorf("network %+v", n)
			}
		}, ""},
		{"net namespace and ip arg", with(func(f *runFlags) { f.netNamespace, f.netIPArg = true, true }), cliEnv{}, func(t *testing.T, p runPlan) {
			if n := p.Spec.Network; n == nil || !n.NAT || !n.Namespace || !n.KernelIPArg {
				t.Errorf("network %+v", n)
			}
		}, ""},
		{"no nat alone", with(func(f *runFlags) { f.noNAT = true }), cliEnv{}, nil, "--no-nat needs --net"},
		{"nics and uplink", with(func(f *runFlags) { f.nics, f.uplink = 3, "wan0" }), cliEnv{}, func(t *testing.T, p runPlan) {
			if n := p.Spec.Network; n == nil || !n.NAT || len(n.NICs) != 3 || n.Uplink != "wan0" {
				t.Errorf("network %+v", n)
			}
		}, ""},
		{"uplink without nat", with(func(f *runFlags) { f.net, f.noNAT, f.uplink = true, true, "wan0" }), cliEnv{}, nil, "--uplink names the device NAT uses"},
		{"too many nics", with(func(f *runFlags) { f.nics = smartvm.MaxNICs + 1 }), cliEnv{}, nil, "invalid --nics 9"},
		{"machine", with(func(f *runFlags) {
			f.image, f.cpuTemplate, f.hugePages, f.smt, f.balloon, f.balloonDeflate = "hello", "t2s", "2m", true, 64, true
		}), cliEnv{}, func(t *testing.T, p runPlan) {
			s := p.Spec
			if s.CPUTemplate != fcapi.CPUTemplateT2S || s.HugePages != fcapi.HugePages2M || !s.SMT ||
				s.Balloon == nil || s.Balloon.AmountMiB != 64 || !s.Balloon.DeflateOnOOM {
				t.Errorf("spec %+v", s)
			}
		}, ""},
		{"metadata", with(func(f *runFlags) { f.image, f.net, f.metadata = "hello", true, metadata }), cliEnv{}, func(t *testing.T, p runPlan) {
			if m := p.Spec.MMDS; m == nil || string(m.Data) != `{"k":"v"}` {
				t.Errorf("mmds %+v", m)
			}
		}, ""},
		{"metadata without net", with(func(f *runFlags) { f.image, f.metadata = "hello", metadata }), cliEnv{}, nil, "--metadata needs --net"},
		{"metadata not json", with(func(f *runFlags) { f.image, f.net, f.metadata = "hello", true, manifest+".bad" }), cliEnv{}, nil, "the file is not JSON"},
		{"serial log limit", with(func(f *runFlags) { f.image, f.serialLogMiB = "hello", 2 }), cliEnv{}, func(t *testing.T, p runPlan) {
			if p.SerialLogLimit != 2<<20 {
				t.Errorf("serial log limit %d", p.SerialLogLimit)
			}
		}, ""},
		{"no serial log limit", with(func(f *runFlags) { f.image, f.serialLogMiB = "hello", 0 }), cliEnv{}, func(t *testing.T, p runPlan) {
			if p.SerialLogLimit != -1 {
				t.Errorf("serial log limit %d", p.SerialLogLimit)
			}
		}, ""},
		{"bad cpu template", with(func(f *runFlags) { f.cpuTemplate = "T9" }), cliEnv{}, nil, `invalid --cpu-template "T9"`},
		{"bad huge pages", with(func(f *runFlags) { f.hugePages = "1G" }), cliEnv{}, nil, `invalid --huge-pages "1G"`},
		{"deflate without balloon", with(func(f *runFlags) { f.balloonDeflate = true }), cliEnv{}, nil, "--balloon-deflate-on-oom needs --balloon"},
		{"spec file", with(func(f *runFlags) { f.specFile, f.changed = specFile, func(string) bool { return false } }), cliEnv{}, func(t *testing.T, p runPlan) {
			s := p.Spec
			if s.Name != "from-file" || p.GeneratedName || s.VCPUs != 2 || s.MemoryMiB != 256 || s.Kernel != filepath.Join(dir, "vmlinux") ||
				len(s.Drives) != 2 || s.Drives[0].Path != filepath.Join(dir, "root.ext4") || s.Drives[1].Path != "/abs/data.img" ||
				s.BootMode != smartvm.BootModeConfigFile || s.Labels["from"] != "file" || !s.SerialInput {
				t.Errorf("spec %+v", s)
			}
		}, ""},
		{"spec file with overrides", with(func(f *runFlags) {
			f.specFile, f.name, f.memory, f.labels, f.rootfs, f.net = specFile, "flagged", 1024, []string{"extra=1"}, "other.ext4", true
			f.changed = func(n string) bool { return n == "name" || n == "memory" }
		}), cliEnv{}, func(t *testing.T, p runPlan) {
			s := p.Spec
			if s.Name != "flagged" || s.VCPUs != 2 || s.MemoryMiB != 1024 || s.Labels["from"] != "file" || s.Labels["extra"] != "1" ||
				len(s.Drives) != 2 || !strings.HasSuffix(s.Drives[0].Path, "/other.ext4") || !s.Drives[0].Root || s.Network == nil ||
				s.BootMode != smartvm.BootModeConfigFile {
				t.Errorf("spec %+v", s)
			}
		}, ""},
		{"spec file, image flag", with(func(f *runFlags) {
			f.specFile, f.image = specFile, "lts"
			f.changed = func(string) bool { return false }
		}),
			cliEnv{}, func(t *testing.T, p runPlan) {
				s := p.Spec
				if s.Kernel != "" || s.BaseImagePreset != "lts" || len(s.Drives) != 1 || s.Drives[0].Root {
					t.Errorf("spec %+v", s)
				}
			}, ""},
		{"spec file typo", with(func(f *runFlags) { f.specFile, f.changed = typoFile, func(string) bool { return false } }), cliEnv{}, nil, `json: unknown field "vcpu"`},
		{"image and kernel", with(func(f *runFlags) { f.image, f.kernel = "hello", "k" }), cliEnv{}, nil, "--kernel cannot be combined with --image"},
		{"rootfs alone", with(func(f *runFlags) { f.rootfs = "r" }), cliEnv{}, nil, "need --kernel"},
		{"persistent without rootfs", with(func(f *runFlags) { f.persistentRootfs = true }), cliEnv{}, nil, "--persistent-rootfs needs --rootfs"},
		{"unknown image", with(func(f *runFlags) { f.image = "no/such:image:form" }), cliEnv{}, nil, `invalid --image: image "no/such:image:form" is not latest, lts`},
		{"boot mode", with(func(f *runFlags) { f.bootMode = "fast" }), cliEnv{}, nil, `invalid --boot-mode "fast"`},
		{"cpus", with(func(f *runFlags) { f.cpus = 0 }), cliEnv{}, nil, "invalid --cpus 0"},
		{"too many cpus", with(func(f *runFlags) { f.cpus = smartvm.MaxVCPUs + 1 }), cliEnv{}, nil, "invalid --cpus 33: want 1 to 32"},
		{"too much memory", with(func(f *runFlags) { f.memory = smartvm.MaxMemoryMiB + 1 }), cliEnv{}, nil, "invalid --memory 1048577"},
		{"memory with a unit", with(func(f *runFlags) { f.memory = 2048 }), cliEnv{}, func(t *testing.T, p runPlan) {
			if p.Spec.MemoryMiB != 2048 {
				t.Errorf("memory %d", p.Spec.MemoryMiB)
			}
		}, ""},
		{"bad image URL", with(func(f *runFlags) { f.image = "https://" }), cliEnv{}, nil, `invalid --image: image "https://": an http(s) image is a manifest URL`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{lookupEnv: tc.env.lookup}
			p, err := a.planRun(tc.flags)
			if tc.usage != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.usage) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tc.usage)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func TestEscapeFilter(t *testing.T) {
	t.Parallel()
	var got strings.Builder
	f := &escapeFilter{out: &got}
	if f.feed([]byte("ab\x1d\x1dc\x1dx")) {
		t.Fatal("stopped without the escape sequence")
	}
	if f.feed([]byte("y\x1d")) || f.feed([]byte("z")) {
		t.Fatal("stopped on Ctrl-] z")
	}
	f = &escapeFilter{out: &got}
	if f.feed([]byte("\x1d")) || !f.feed([]byte("q")) {
		t.Fatal("Ctrl-] q split over two reads did not stop")
	}
	if want := "ab\x1dc\x1dxy\x1dz"; got.String() != want {
		t.Errorf("forwarded %q, want %q", got.String(), want)
	}
}

func TestCRLFWriter(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	w := &crlfWriter{w: &b}
	w.Write([]byte("a\nb\r\nc\r"))
	w.Write([]byte("\nd\n"))
	if want := "a\r\nb\r\nc\r\nd\r\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestParseMiB(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{
		"512": 512, "512M": 512, "512m": 512, "512MB": 512, "512MiB": 512, "512mib": 512,
		"1G": 1024, "1g": 1024, "1GiB": 1024, "1GB": 1024, "1.5G": 1536, "0.5g": 512,
		"1T": 1 << 20, "2097152k": 2048, "1048576KiB": 1024, "536870912b": 512, " 2G ": 2048, "1 GiB": 1024,
	} {
		if got, err := parseMiB(in); err != nil || got != want {
			t.Errorf("parseMiB(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"":            "not a size",
		"G":           "not a size",
		"1.2.3":       "not a size",
		"12X":         `unknown unit "X"`,
		"1000k":       "not a whole number of MiB",
		"-1G":         "not a size",
		"9999999999T": "too large",
	} {
		if _, err := parseMiB(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseMiB(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}
