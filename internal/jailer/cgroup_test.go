package jailer

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// hybridMountinfo is this project's CI host: cgroups v1, and cgroup2 with hugetlb only.
const hybridMountinfo = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const hybridCgroups = `#subsys_name	hierarchy	num_cgroups	enabled
cpuset	3	1	1
cpu	1	1	1
cpuacct	2	1	1
memory	4	37	1
hugetlb	0	1	1
`

func TestParseMountinfo(t *testing.T) {
	hy := ParseMountinfo([]byte(hybridMountinfo), []byte(hybridCgroups), []byte("hugetlb\n"))
	want := Layout{V1: map[string]string{"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
		"cpuset": "/sys/fs/cgroup/cpuset", "memory": "/sys/fs/cgroup/memory"},
		V2: "/sys/fs/cgroup/unified", V2Controllers: []string{"hugetlb"}}
	if diff := cmp.Diff(want, hy); diff != "" {
		t.Errorf("hybrid (-want +got):\n%s", diff)
	}
	if hy.Kind() != "hybrid" || hy.Version() != 1 {
		t.Errorf("hybrid: kind %s version %d, want hybrid 1", hy.Kind(), hy.Version())
	}

	v2 := ParseMountinfo([]byte("25 21 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"), nil, []byte("cpuset cpu io memory pids\n"))
	if v2.Kind() != "v2" || v2.Version() != 2 || v2.V2 != "/sys/fs/cgroup" || !v2.Has(2, "memory") {
		t.Errorf("v2 = %+v", v2)
	}

	comounted := ParseMountinfo([]byte("31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n34 30 0:31 / /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n"),
		[]byte("cpu 1 1 1\ncpuacct 1 1 1\nmemory 2 1 0\n"), nil)
	if diff := cmp.Diff(Layout{V1: map[string]string{"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"}}, comounted); diff != "" {
		t.Errorf("co-mounted v1, memory disabled (-want +got):\n%s", diff)
	}
	if none := ParseMountinfo(nil, nil, nil); none.Kind() != "none" || none.String() != "none" {
		t.Errorf("none = %s", none)
	}
}

func TestSettings(t *testing.T) {
	hy := ParseMountinfo([]byte(hybridMountinfo), []byte(hybridCgroups), []byte("hugetlb\n"))
	lim := Limits{CPUQuotaUS: 50000, MemoryBytes: 256 << 20, Cpuset: "0"}
	got, err := hy.Settings(1, lim)
	if err != nil {
		t.Fatal(err)
	}
	want := []Setting{{"cpu.cfs_period_us", "100000"}, {"cpu.cfs_quota_us", "50000"}, {"memory.limit_in_bytes", "268435456"}, {"cpuset.cpus", "0"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("v1 settings (-want +got):\n%s", diff)
	}
	if _, err := hy.Settings(2, Limits{MemoryBytes: 1 << 30}); !errors.Is(err, ErrCgroupUnsupported) {
		t.Errorf("memory limit on a v2 with hugetlb only: %v, want ErrCgroupUnsupported", err)
	}
	v2 := Layout{V2: "/sys/fs/cgroup", V2Controllers: []string{"cpu", "memory", "cpuset"}}
	got, err = v2.Settings(2, Limits{CPUQuotaUS: 20000, CPUPeriodUS: 50000, MemoryBytes: 1 << 30, Cpuset: "1-2"})
	if err != nil {
		t.Fatal(err)
	}
	want = []Setting{{"cpu.max", "20000 50000"}, {"memory.max", "1073741824"}, {"cpuset.cpus", "1-2"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("v2 settings (-want +got):\n%s", diff)
	}
	for _, bad := range []Limits{{CPUQuotaUS: 10}, {MemoryBytes: -1}, {Cpuset: "0;rm"}} {
		if _, err := v2.Settings(2, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Settings(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	cfg := Config{ID: "vm", ExecFile: "/x/firecracker", CgroupVersion: 1, Cgroups: []Setting{{"cpu.cfs_quota_us", "1"}, {"cpu.cfs_period_us", "2"}, {"memory.limit_in_bytes", "3"}}}
	if diff := cmp.Diff([]string{"/sys/fs/cgroup/cpu/firecracker/vm", "/sys/fs/cgroup/memory/firecracker/vm"}, hy.CgroupDirs(cfg)); diff != "" {
		t.Errorf("CgroupDirs (-want +got):\n%s", diff)
	}
}

func TestIsCgroupDir(t *testing.T) {
	l := ParseMountinfo([]byte(hybridMountinfo), []byte(hybridCgroups), []byte("hugetlb\n"))
	cfg := Config{ID: "vm1", ExecFile: "/usr/bin/firecracker"}
	for d, want := range map[string]bool{
		"/sys/fs/cgroup/cpu/firecracker/vm1":     true,
		"/sys/fs/cgroup/unified/firecracker/vm1": true,
		"/sys/fs/cgroup/cpu/firecracker/vm2":     false,
		"/sys/fs/cgroup/cpu/other/vm1":           false,
		"/sys/fs/cgroup/firecracker/vm1":         false,
		"/sys/fs/cgroup/cpu/firecracker/../vm1":  false,
		"/tmp/cpu/firecracker/vm1":               false,
	} {
		if got := l.IsCgroupDir(cfg, d); got != want {
			t.Errorf("IsCgroupDir(%s) = %v, want %v", d, got, want)
		}
	}
	cfg.ParentCgroup = "smartvm/jails"
	if !l.IsCgroupDir(cfg, "/sys/fs/cgroup/memory/smartvm/jails/vm1") || l.IsCgroupDir(cfg, "/sys/fs/cgroup/memory/firecracker/vm1") {
		t.Error("a parent cgroup of the spec's is not the one checked")
	}
	cfg.ParentCgroup = "../.."
	if l.IsCgroupDir(cfg, "/sys/vm1") {
		t.Error("a parent cgroup escaping the mount is accepted")
	}
}
