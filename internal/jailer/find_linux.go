package jailer

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/smartvm/smartvm/internal/proc"
)

// Found is a jailed firecracker found from /proc alone, for a VM whose record cannot be read.
type Found struct {
	// PID and Start identify the process (proc.StartTime).
	PID   int
	Start uint64
	// Config is the jail it runs in: its ID, exec name, chroot base and uid (gid = uid).
	Config Config
	// Cgroups are the cgroup paths (relative to their hierarchy's root, as /proc/<pid>/cgroup
	// shows them) of the process that end in the jail's ID, keyed by hierarchy: "" for
	// cgroup2, else the v1 controllers ("cpu,cpuacct").
	Cgroups map[string]string
	// GuardPID and GuardStart identify its parent when that is a guard (the init of a PID
	// namespace of this process's user); 0 otherwise.
	GuardPID   int
	GuardStart uint64
}

// FindJailed returns the processes proven to be the firecracker of jail id run as uid: each
// runs as uid, was started with --id id, and its root (/proc/<pid>/root) is a chroot
// <base>/<exec name>/<id>/root. uid must be one leased to id alone, so that a process of
// another VM never passes.
func FindJailed(uid uint32, id string) []Found {
	if uid == 0 || ValidateID(id) != nil {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Found
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, ok := jailed(pid, uid, id); ok {
			out = append(out, f)
		}
	}
	return out
}

// JailedIdentity is what a jailed firecracker of jail id run as uid matches (proc.Check).
func JailedIdentity(uid uint32, id string) proc.Identity {
	return proc.Identity{UID: uid, Flag: "--id", Value: id}
}

// jailed reports whether pid is jail id's firecracker (FindJailed), and describes it.
func jailed(pid int, uid uint32, id string) (Found, bool) {
	start, err := proc.StartTime(pid)
	if err != nil || proc.Check(pid, JailedIdentity(uid, id)) != nil {
		return Found{}, false
	}
	base := "/proc/" + strconv.Itoa(pid)
	root, err := os.Readlink(base + "/root")
	if err != nil || !filepath.IsAbs(root) || filepath.Clean(root) != root || filepath.Base(root) != "root" || filepath.Base(filepath.Dir(root)) != id {
		return Found{}, false
	}
	execDir := filepath.Dir(filepath.Dir(root))
	cfg := Config{ID: id, ExecFile: "/" + filepath.Base(execDir), UID: uid, GID: uid, ChrootBase: filepath.Dir(execDir)}
	if cfg.Chroot().Root != root || cfg.ExecName() == "/" || cfg.ExecName() == "." {
		return Found{}, false
	}
	f := Found{PID: pid, Start: start, Config: cfg, Cgroups: map[string]string{}}
	if b, err := os.ReadFile(base + "/cgroup"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			// hierarchy-ID:controllers:path
			p := strings.SplitN(sc.Text(), ":", 3)
			if len(p) == 3 && filepath.Base(p[2]) == id && filepath.Clean(p[2]) == p[2] && strings.Count(p[2], "/") >= 2 {
				f.Cgroups[p[1]] = p[2]
			}
		}
	}
	if status, err := os.ReadFile(base + "/status"); err == nil {
		ppid, _ := statusPIDs(status)
		if isGuard(ppid) {
			if gs, err := proc.StartTime(ppid); err == nil {
				f.GuardPID, f.GuardStart = ppid, gs
			}
		}
	}
	return f, true
}

// isGuard reports whether pid is the init of a PID namespace (other than the host's) run as
// this process's user, as a guard is.
func isGuard(pid int) bool {
	if pid <= 1 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	_, ns := statusPIDs(b)
	return len(ns) >= 2 && ns[len(ns)-1] == 1 && bytes.Contains(b, []byte("\nUid:\t"+strconv.Itoa(os.Geteuid())+"\t"))
}
