package smartvm

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/smartvm/smartvm/internal/jailer"
)

// JailerSpec runs the VM's firecracker through Firecracker's jailer: in a chroot of its own,
// as an unprivileged uid and gid, in its own mount (and by default PID) namespace, with
// cgroup limits and rlimits. It needs root, and a jailer of firecracker's release
// (WithJailerBinary). Paths stay host paths for the caller: Start puts the kernel, initrd
// and drives into the chroot and maps every path firecracker is given.
type JailerSpec struct {
	// UID and GID are the user and group firecracker runs as; never 0. Zero value: a pair
	// leased to the VM from the manager's range (WithJailerIDRange), the same number for
	// both, never one that names a host account or group.
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
	// ChrootBase is where jails are built, <base>/<exec name>/<VM name>/root. It must be
	// trustworthy like the runtime root (owned by root, writable by nobody else). Zero value:
	// DefaultChrootBase. A persistent drive must be on its filesystem (it is hard-linked in,
	// never copied); read-only inputs elsewhere are copied.
	ChrootBase string `json:"chroot_base,omitempty"`
	// CgroupVersion is 1 or 2. Zero value: detected (v2 where its hierarchy has the cpu and
	// memory controllers, else v1; a hybrid host whose cgroup2 mount has neither uses v1).
	CgroupVersion int `json:"cgroup_version,omitempty"`
	// CPUQuota caps firecracker's CPU time, in CPUs (0.5 is half of one CPU). Zero value: no
	// cap.
	CPUQuota float64 `json:"cpu_quota,omitempty"`
	// MemoryLimit caps firecracker's memory in bytes, guest memory and its own together.
	// Zero value: no cap.
	MemoryLimit int64 `json:"memory_limit,omitempty"`
	// Cpuset restricts firecracker to CPUs, as "0-3,6". Zero value: all.
	Cpuset string `json:"cpuset,omitempty"`
	// ParentCgroup is the cgroup the VM's cgroup is made in, relative to each hierarchy's
	// root. Zero value: the firecracker binary's name, as the jailer does.
	ParentCgroup string `json:"parent_cgroup,omitempty"`
	// FSize limits the size of files firecracker writes (RLIMIT_FSIZE, bytes). Zero value:
	// no limit.
	FSize uint64 `json:"fsize,omitempty"`
	// NoFile limits firecracker's open files (RLIMIT_NOFILE). Zero value: the jailer's 2048.
	NoFile uint64 `json:"no_file,omitempty"`
	// SharedPIDNamespace keeps firecracker out of a PID namespace of its own (the jailer's
	// --new-pid-ns). Zero value: firecracker is PID 1 of a new PID namespace. As PID 1 it
	// ignores SIGTERM from outside (it installs no handler for it), so Stop's SIGTERM step
	// does nothing there and a guest that ignores Ctrl-Alt-Del ends with SIGKILL.
	SharedPIDNamespace bool `json:"shared_pid_namespace,omitempty"`
}

// DefaultChrootBase is the jailer's chroot base unless JailerSpec.ChrootBase names another.
const DefaultChrootBase = jailer.DefaultChrootBase

// ErrJailer reports a jailer that cannot run this VM: none found, one of another release
// than firecracker, or a host that lacks what the jail asks for (root, a cgroup controller).
var ErrJailer = errors.New("jailer unusable")

// problems lists what is wrong with the spec, before any host is looked at.
func (j *JailerSpec) problems() []error {
	var errs []error
	if j.UID == 0 && j.GID != 0 || j.GID == 0 && j.UID != 0 {
		errs = append(errs, fmt.Errorf("jailer: uid %d gid %d: give both, or neither for a leased pair", j.UID, j.GID))
	}
	if b := j.ChrootBase; b != "" && (!filepath.IsAbs(b) || filepath.Clean(b) != b) {
		errs = append(errs, fmt.Errorf("jailer: chroot base %q must be a clean absolute path", b))
	}
	if v := j.CgroupVersion; v != 0 && v != 1 && v != 2 {
		errs = append(errs, fmt.Errorf("jailer: cgroup version %d: must be 1 or 2", v))
	}
	if j.CPUQuota < 0 || j.CPUQuota > 0 && j.CPUQuota*jailer.DefaultCPUPeriodUS < 1000 {
		errs = append(errs, fmt.Errorf("jailer: cpu quota %g: give at least 0.01 CPUs", j.CPUQuota))
	}
	if j.MemoryLimit < 0 {
		errs = append(errs, fmt.Errorf("jailer: memory limit %d is negative", j.MemoryLimit))
	}
	return errs
}

// limits are the cgroup limits the spec asks for.
func (j *JailerSpec) limits() jailer.Limits {
	lim := jailer.Limits{MemoryBytes: j.MemoryLimit, Cpuset: j.Cpuset}
	if j.CPUQuota > 0 {
		lim.CPUQuotaUS, lim.CPUPeriodUS = int64(j.CPUQuota*jailer.DefaultCPUPeriodUS), jailer.DefaultCPUPeriodUS
	}
	return lim
}

// jailOptions are the manager's jailer settings.
type jailOptions struct {
	binary            string
	firstID, countIDs uint32
}

// WithJailerBinary sets the jailer executable for specs with a JailerSpec: a path, or a name
// looked up in PATH. Default: "jailer" in the firecracker binary's directory.
func WithJailerBinary(path string) Option { return func(o *options) { o.jail.binary = path } }

// WithJailerIDRange sets the uids (and gids) leased to jailed VMs that name none: count ids
// from first. Default: 65536 ids from 1900000000.
func WithJailerIDRange(first, count uint32) Option {
	return func(o *options) { o.jail.firstID, o.jail.countIDs = first, count }
}

// jailStaged reports whether path is where a jail of spec stages drive id:
// <chroot base>/<exec name>/<VM name>/root/drives/<id>.img. A restore into a jail restages
// the drive there again.
func jailStaged(spec MachineSpec, id, path string) bool {
	if spec.Jailer == nil {
		return false
	}
	base := spec.Jailer.ChrootBase
	if base == "" {
		base = DefaultChrootBase
	}
	rel, err := filepath.Rel(base, path)
	if err != nil || filepath.Clean(path) != path {
		return false
	}
	p := strings.Split(rel, "/")
	return len(p) == 5 && p[0] != ".." && p[1] == spec.Name && p[2] == "root" && p[3] == "drives" && p[4] == id+".img"
}
