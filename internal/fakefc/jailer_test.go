package fakefc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseJailerArgs(t *testing.T) {
	dir := t.TempDir()
	fc := filepath.Join(dir, "firecracker-v1.7.0")
	os.WriteFile(fc, nil, 0o755)
	other := filepath.Join(dir, "vmm")
	os.WriteFile(other, nil, 0o755)
	v17, _ := loadRelease("1.7.0")
	v114, _ := loadRelease("1.14.2")
	base := []string{"--id", "vm-1", "--exec-file", fc, "--uid", "100", "--gid", "101", "--chroot-base-dir", dir}
	c, err := parseJailerArgs(v17, append(base, "--cgroup-version", "2", "--cgroup", "cpu.max=1000 100000",
		"--resource-limit", "fsize=10", "--resource-limit", "no-file=20", "--new-pid-ns", "--", "--api-sock", "/a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Chroot() != filepath.Join(dir, "firecracker-v1.7.0", "vm-1", "root") || c.UID != 100 || c.GID != 101 || c.CgroupVersion != 2 ||
		c.FSize != 10 || c.NoFile != 20 || !c.NewPIDNS || strings.Join(c.Args, " ") != "--api-sock /a.sock" {
		t.Errorf("parsed %+v", c)
	}
	if c, _ := parseJailerArgs(v17, base); c.NoFile != 2048 || c.CgroupVersion != 1 {
		t.Errorf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		name string
		rel  *release
		argv []string
		want string
	}{
		{"missing uid", v17, []string{"--id", "a", "--exec-file", fc, "--gid", "1"}, "Missing mandatory argument: uid"},
		{"bad id", v17, replace(base, "vm-1", "vm_1"), "Invalid instance ID: InvalidChar('_', 2)"},
		{"long id", v17, replace(base, "vm-1", strings.Repeat("a", 65)), "InvalidLen(65, 1, 64)"},
		{"exec name before 1.13", v17, replace(base, fc, other), "must contain \"firecracker\""},
		{"missing exec", v17, replace(base, fc, filepath.Join(dir, "nope-firecracker")), "Failed to canonicalize path"},
		{"missing base", v17, replace(base, dir, filepath.Join(dir, "nope")), "Failed to canonicalize path"},
		{"bad uid", v17, replace(base, "100", "-1"), "Invalid uid/gid"},
		{"bad cgroup", v17, append(base, "--cgroup", "cpu.max"), "Invalid format for cgroups"},
		{"bad limit", v17, append(base, "--resource-limit", "cores=1"), "Invalid resource argument: cores"},
		{"bad version", v17, append(base, "--cgroup-version", "3"), "invalid cgroup version"},
		{"unknown", v17, append(base, "--daemon"), "Found argument '--daemon'"},
		{"twice", v17, append(base, "--id", "b"), "provided more than once"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseJailerArgs(tc.rel, tc.argv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := parseJailerArgs(v114, replace(base, fc, other)); err != nil {
		t.Errorf("v1.14 takes any exec name: %v", err)
	}
}

func replace(argv []string, old, new string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = a
		if a == old {
			out[i] = new
		}
	}
	return out
}
