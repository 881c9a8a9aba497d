package jailer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ErrCgroupUnsupported reports a cgroup setting the host's cgroup layout cannot apply.
var ErrCgroupUnsupported = errors.New("cgroup setting not supported by this host")

// Layout is where the host mounts its cgroup hierarchies.
type Layout struct {
	// V1 maps each cgroup v1 controller to the mount point of its hierarchy.
	V1 map[string]string `json:"v1,omitempty"`
	// V2 is the cgroup2 mount point, empty without one.
	V2 string `json:"v2,omitempty"`
	// V2Controllers are the controllers the cgroup2 hierarchy offers (its root's
	// cgroup.controllers).
	V2Controllers []string `json:"v2_controllers,omitempty"`
}

// Kind names the layout: "v1", "v2", "hybrid" (both, as on systemd's hybrid hosts) or "none".
func (l Layout) Kind() string {
	switch {
	case len(l.V1) > 0 && l.V2 != "":
		return "hybrid"
	case len(l.V1) > 0:
		return "v1"
	case l.V2 != "":
		return "v2"
	}
	return "none"
}

// String describes the layout for humans, as in "hybrid (v1: cpu memory; v2 at
// /sys/fs/cgroup/unified: hugetlb)".
func (l Layout) String() string {
	var parts []string
	if len(l.V1) > 0 {
		parts = append(parts, "v1: "+strings.Join(l.controllersV1(), " "))
	}
	if l.V2 != "" {
		c := strings.Join(l.V2Controllers, " ")
		if c == "" {
			c = "no controllers"
		}
		parts = append(parts, "v2 at "+l.V2+": "+c)
	}
	if len(parts) == 0 {
		return "none"
	}
	return l.Kind() + " (" + strings.Join(parts, "; ") + ")"
}

func (l Layout) controllersV1() []string {
	var c []string
	for k := range l.V1 {
		c = append(c, k)
	}
	sort.Strings(c)
	return c
}

// Has reports whether cgroup version v offers controller.
func (l Layout) Has(v int, controller string) bool {
	if v == 2 {
		return l.V2 != "" && slices.Contains(l.V2Controllers, controller)
	}
	_, ok := l.V1[controller]
	return ok
}

// Version picks the cgroup version the jailer should use: 2 when the cgroup2 hierarchy
// offers the controllers limits need (cpu, memory, cpuset) or no v1 hierarchy exists, else 1.
// A hybrid host whose cgroup2 mount offers none of them (only hugetlb, say) gets 1.
func (l Layout) Version() int {
	if len(l.V1) == 0 {
		return 2
	}
	for _, c := range []string{"cpu", "memory", "cpuset"} {
		if l.Has(2, c) && !l.Has(1, c) {
			return 2
		}
	}
	if l.Has(2, "cpu") && l.Has(2, "memory") {
		return 2
	}
	return 1
}

// Mount returns the mount point of the hierarchy holding controller under version v.
func (l Layout) Mount(v int, controller string) string {
	if v == 2 {
		return l.V2
	}
	return l.V1[controller]
}

// ParseMountinfo reads the cgroup mounts from /proc/<pid>/mountinfo content, and the
// controllers' states from /proc/cgroups content (disabled controllers are left out).
// controllersV2 is the cgroup2 root's cgroup.controllers, if any.
func ParseMountinfo(mountinfo, procCgroups, controllersV2 []byte) Layout {
	enabled := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(procCgroups))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && !strings.HasPrefix(f[0], "#") {
			enabled[f[0]] = f[3] == "1"
		}
	}
	l := Layout{}
	sc = bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		mnt := unescapeMount(pf[4])
		switch qf[0] {
		case "cgroup2":
			if l.V2 == "" {
				l.V2 = mnt
			}
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				if on, known := enabled[opt]; known && on {
					if l.V1 == nil {
						l.V1 = map[string]string{}
					}
					if _, dup := l.V1[opt]; !dup {
						l.V1[opt] = mnt
					}
				}
			}
		}
	}
	if l.V2 != "" {
		l.V2Controllers = strings.Fields(string(controllersV2))
	}
	return l
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Limits are resource limits for the jailed firecracker process (beyond guest memory: its
// own threads and buffers count too).
type Limits struct {
	// CPUQuotaUS and CPUPeriodUS cap CPU time: CPUQuotaUS microseconds every CPUPeriodUS
	// (default 100000). Zero quota means no cap.
	CPUQuotaUS, CPUPeriodUS int64
	// MemoryBytes caps the process's memory; zero means no cap.
	MemoryBytes int64
	// Cpuset lists the CPUs it may run on, as "0-3,6"; empty means all.
	Cpuset string
}

// IsZero reports whether no limit is set.
func (lim Limits) IsZero() bool { return lim == Limits{} }

// DefaultCPUPeriodUS is the CFS period used when Limits.CPUPeriodUS is zero.
const DefaultCPUPeriodUS = 100000

// Settings returns the cgroup files that apply lim under cgroup version v on this layout, or
// an error wrapping ErrCgroupUnsupported that names the controller the host lacks.
func (l Layout) Settings(v int, lim Limits) ([]Setting, error) {
	if lim.CPUQuotaUS < 0 || lim.CPUPeriodUS < 0 || lim.MemoryBytes < 0 {
		return nil, fmt.Errorf("%w: negative cgroup limit", ErrInvalid)
	}
	if lim.CPUQuotaUS != 0 && lim.CPUQuotaUS < 1000 {
		return nil, fmt.Errorf("%w: cpu quota %dµs: the kernel needs at least 1000µs per period", ErrInvalid, lim.CPUQuotaUS)
	}
	for _, c := range lim.Cpuset {
		if !(c >= '0' && c <= '9' || c == ',' || c == '-') {
			return nil, fmt.Errorf("%w: cpuset %q: want a CPU list such as 0-3,6", ErrInvalid, lim.Cpuset)
		}
	}
	var s []Setting
	need := func(controller string) error {
		if !l.Has(v, controller) {
			return fmt.Errorf("%w: cgroup v%d on this host (%s) has no %s controller: drop the %s limit, or use the other cgroup version", ErrCgroupUnsupported, v, l, controller, controller)
		}
		return nil
	}
	if lim.CPUQuotaUS != 0 {
		if err := need("cpu"); err != nil {
			return nil, err
		}
		period := lim.CPUPeriodUS
		if period == 0 {
			period = DefaultCPUPeriodUS
		}
		if v == 2 {
			s = append(s, Setting{"cpu.max", fmt.Sprintf("%d %d", lim.CPUQuotaUS, period)})
		} else {
			s = append(s, Setting{"cpu.cfs_period_us", strconv.FormatInt(period, 10)}, Setting{"cpu.cfs_quota_us", strconv.FormatInt(lim.CPUQuotaUS, 10)})
		}
	}
	if lim.MemoryBytes != 0 {
		if err := need("memory"); err != nil {
			return nil, err
		}
		file := "memory.limit_in_bytes"
		if v == 2 {
			file = "memory.max"
		}
		s = append(s, Setting{file, strconv.FormatInt(lim.MemoryBytes, 10)})
	}
	if lim.Cpuset != "" {
		if err := need("cpuset"); err != nil {
			return nil, err
		}
		s = append(s, Setting{"cpuset.cpus", lim.Cpuset})
	}
	return s, nil
}

// CgroupDirs returns the cgroup directories the jailer makes for cfg on this layout (one per
// v1 hierarchy a setting uses; one under v2), which Remove deletes.
func (l Layout) CgroupDirs(cfg Config) []string {
	v := cfg.CgroupVersion
	if v == 0 {
		v = 1
	}
	seen := map[string]bool{}
	var dirs []string
	for _, s := range cfg.Cgroups {
		controller, _, _ := strings.Cut(s.File, ".")
		mnt := l.Mount(v, controller)
		if mnt == "" {
			continue
		}
		d := filepath.Join(mnt, cfg.CgroupParent(), cfg.ID)
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// IsCgroupDir reports whether d is one of the cgroup directories the jailer can make for
// cfg's jail on this layout: <mount of a hierarchy>/<cfg.CgroupParent()>/<cfg.ID>, with a
// parent that stays under the mount. A directory read from a record is removed only if it is.
func (l Layout) IsCgroupDir(cfg Config, d string) bool {
	parent := cfg.CgroupParent()
	if !filepath.IsLocal(parent) || filepath.Clean(parent) != parent || ValidateID(cfg.ID) != nil {
		return false
	}
	mounts := slices.Collect(maps.Values(l.V1))
	if l.V2 != "" {
		mounts = append(mounts, l.V2)
	}
	return slices.ContainsFunc(mounts, func(m string) bool { return d == filepath.Join(m, parent, cfg.ID) })
}

// CheckSettings reads back each setting from the jail's cgroup directories, as written by the
// jailer: it reports the first one whose file is missing or holds another value.
func (l Layout) CheckSettings(cfg Config) error {
	v := cfg.CgroupVersion
	if v == 0 {
		v = 1
	}
	for _, s := range cfg.Cgroups {
		controller, _, _ := strings.Cut(s.File, ".")
		p := filepath.Join(l.Mount(v, controller), cfg.CgroupParent(), cfg.ID, s.File)
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("check cgroup %s: %w", s.File, err)
		}
		if got := strings.TrimSpace(string(b)); got != s.Value {
			return fmt.Errorf("cgroup %s is %q, not %q", p, got, s.Value)
		}
	}
	return nil
}
