package jailer

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestArgs(t *testing.T) {
	c := Config{ID: "vm-1", ExecFile: "/opt/fc/firecracker", UID: 100000, GID: 100001, NetNS: "/var/run/netns/smv-vm-1",
		CgroupVersion: 2, Cgroups: []Setting{{"cpu.max", "50000 100000"}, {"memory.max", "268435456"}},
		ParentCgroup: "smartvm", FSize: 1 << 30, NoFile: 4096, NewPIDNS: true,
		FirecrackerArgs: []string{"--api-sock", "/api.sock"}}
	want := []string{"--id", "vm-1", "--exec-file", "/opt/fc/firecracker", "--uid", "100000", "--gid", "100001",
		"--chroot-base-dir", "/srv/jailer", "--netns", "/var/run/netns/smv-vm-1", "--cgroup-version", "2",
		"--cgroup", "cpu.max=50000 100000", "--cgroup", "memory.max=268435456", "--parent-cgroup", "smartvm",
		"--resource-limit", "fsize=1073741824", "--resource-limit", "no-file=4096", "--new-pid-ns",
		"--", "--api-sock", "/api.sock"}
	if diff := cmp.Diff(want, c.Args()); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	min := Config{ID: "a", ExecFile: "/fc", UID: 1, GID: 1, ChrootBase: "/jail"}
	if diff := cmp.Diff([]string{"--id", "a", "--exec-file", "/fc", "--uid", "1", "--gid", "1", "--chroot-base-dir", "/jail"}, min.Args()); diff != "" {
		t.Errorf("minimal Args (-want +got):\n%s", diff)
	}
}

func TestValidate(t *testing.T) {
	ok := Config{ID: "vm-1", ExecFile: "/fc/firecracker", UID: 1000, GID: 1000}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"uid 0", func(c *Config) { c.UID = 0 }, "must not run as root"},
		{"gid 0", func(c *Config) { c.GID = 0 }, "must not run as root"},
		{"id with underscore", func(c *Config) { c.ID = "vm_1" }, "letters, digits and '-'"},
		{"id too long", func(c *Config) { c.ID = strings.Repeat("a", 65) }, "1 to 64"},
		{"empty id", func(c *Config) { c.ID = "" }, "1 to 64"},
		{"relative exec", func(c *Config) { c.ExecFile = "firecracker" }, "absolute"},
		{"relative base", func(c *Config) { c.ChrootBase = "srv" }, "absolute"},
		{"cgroup version 3", func(c *Config) { c.CgroupVersion = 3 }, "must be 1 or 2"},
		{"parent escapes", func(c *Config) { c.ParentCgroup = "../x" }, "clean relative"},
		{"absolute parent", func(c *Config) { c.ParentCgroup = "/x" }, "clean relative"},
		{"cgroup file path", func(c *Config) { c.Cgroups = []Setting{{"../cpu.max", "1"}} }, "<controller>.<file>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

func TestChroot(t *testing.T) {
	c := Config{ID: "vm-1", ExecFile: "/usr/bin/firecracker-v1.7.0", ChrootBase: "/srv/j"}.Chroot()
	if c.Root != "/srv/j/firecracker-v1.7.0/vm-1/root" || c.Dir() != "/srv/j/firecracker-v1.7.0/vm-1" {
		t.Errorf("layout = %s, %s", c.Root, c.Dir())
	}
	if got := c.PIDFile(); got != "/srv/j/firecracker-v1.7.0/vm-1/root/firecracker-v1.7.0.pid" {
		t.Errorf("PIDFile = %s", got)
	}
	for inside, host := range map[string]string{
		"/api.sock": "/srv/j/firecracker-v1.7.0/vm-1/root/api.sock", "run/x": "/srv/j/firecracker-v1.7.0/vm-1/root/run/x",
		"/../../etc/passwd": "/srv/j/firecracker-v1.7.0/vm-1/root/etc/passwd", "/": "/srv/j/firecracker-v1.7.0/vm-1/root",
	} {
		if got := c.Host(inside); got != host {
			t.Errorf("Host(%q) = %s, want %s", inside, got, host)
		}
	}
	if in, ok := c.Inside("/srv/j/firecracker-v1.7.0/vm-1/root/drives/a.img"); !ok || in != "/drives/a.img" {
		t.Errorf("Inside = %q, %v", in, ok)
	}
	for _, outside := range []string{"/srv/j/firecracker-v1.7.0/vm-1", "/etc/passwd", "/srv/j/firecracker-v1.7.0/vm-1/rootx"} {
		if in, ok := c.Inside(outside); ok {
			t.Errorf("Inside(%s) = %q, want outside", outside, in)
		}
	}
}
