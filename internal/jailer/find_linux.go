package jailer

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

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
	// RunID is the --id it was started with: the jail's ID, or the warm ID of a warm jail
	// that the VM took (renamed since).
	RunID string
}

// FindJailed returns the processes proven to be the firecracker of jail id run as uid: each
// runs as uid, was started with --id id (or a warm ID, for a warm jail taken by the VM id),
// and its root (/proc/<pid>/root) is a chroot <base>/<exec name>/<id>/root. uid must be one
// leased to id alone, so that a process of another VM never passes.
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

// JailedIdentity is what a jailed firecracker started with --id runID as uid matches
// (proc.Check).
func JailedIdentity(uid uint32, runID string) proc.Identity {
	return proc.Identity{UID: uid, Flag: "--id", Value: runID}
}

// runID returns the --id process pid was started with, when it is id or a warm ID (a warm
// jail keeps the ID it was started with once a VM takes it).
func runID(pid int, id string) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "", false
	}
	args := strings.Split(string(b), "\x00")
	i := slices.Index(args, "--id")
	if i < 0 || i+1 >= len(args) || args[i+1] != id && !IsWarmID(args[i+1]) {
		return "", false
	}
	return args[i+1], true
}

// jailed reports whether pid is jail id's firecracker (FindJailed), and describes it.
func jailed(pid int, uid uint32, id string) (Found, bool) {
	start, err := proc.StartTime(pid)
	if err != nil {
		return Found{}, false
	}
	// The uid first: it rules out nearly every process of the host from its status alone,
	// before its command line is read.
	if proc.Check(pid, proc.Identity{UID: uid}) != nil {
		return Found{}, false
	}
	run, ok := runID(pid, id)
	if !ok {
		return Found{}, false
	}
	base := "/proc/" + strconv.Itoa(pid)
	root, ok := jailChroot(pid, id)
	if !ok {
		return Found{}, false
	}
	execDir := filepath.Dir(filepath.Dir(root))
	cfg := Config{ID: id, ExecFile: "/" + filepath.Base(execDir), UID: uid, GID: uid, ChrootBase: filepath.Dir(execDir)}
	if cfg.Chroot().Root != root || cfg.ExecName() == "/" || cfg.ExecName() == "." {
		return Found{}, false
	}
	f := Found{PID: pid, Start: start, Config: cfg, Cgroups: map[string]string{}, RunID: run}
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

// Running reports whether a jailed firecracker of jail id may run, whatever uid it runs as: a
// process started with --id id (or a warm ID) whose root is a chroot <base>/<exec name>/<id>/root. That
// proves less than FindJailed: it may only keep what a record cannot vouch for, never justify
// a signal.
func Running(id string) bool {
	if ValidateID(id) != nil {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ok := runID(pid, id); !ok {
			continue
		}
		if _, ok := jailChroot(pid, id); ok {
			return true
		}
	}
	return false
}

// jailChroot returns the host path of process pid's root (chrootOf) when it is a chroot of
// jail id, <base>/<exec name>/<id>/root.
func jailChroot(pid int, id string) (string, bool) {
	root, ok := chrootOf(pid)
	if !ok || !filepath.IsAbs(root) || filepath.Clean(root) != root || filepath.Base(root) != "root" || filepath.Base(filepath.Dir(root)) != id {
		return "", false
	}
	return root, true
}

// isGuard reports whether pid is the init of a PID namespace (other than the host's) run as
// this process's user, as a guard is.
func isGuard(pid int) bool {
	if pid <= 1 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	return err == nil && guardStatus(b)
}

// chrootOf returns the host path of process pid's root directory, checked to be that
// directory (same device and inode as /proc/<pid>/root). A process that only chrooted shows it
// as /proc/<pid>/root's link; the jailer's firecracker, which pivoted its root in a mount
// namespace of its own, shows "/" there, and its root mount's source directory is found
// instead: its mountinfo names it within its filesystem, and this process's mounts of that
// filesystem give it a host path.
func chrootOf(pid int) (string, bool) {
	base := "/proc/" + strconv.Itoa(pid)
	var want unix.Stat_t
	if unix.Stat(base+"/root/", &want) != nil {
		return "", false
	}
	same := func(p string) bool {
		var st unix.Stat_t
		return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Dev == want.Dev && st.Ino == want.Ino
	}
	if l, err := os.Readlink(base + "/root"); err == nil && l != "/" && filepath.IsAbs(l) && same(l) {
		return l, true
	}
	theirs, err := os.ReadFile(base + "/mountinfo")
	if err != nil {
		return "", false
	}
	var dev, inFS string
	for _, m := range mountinfo(theirs) {
		if m.point == "/" {
			dev, inFS = m.dev, m.root // the last mount on / is the one seen
		}
	}
	ours, err := os.ReadFile("/proc/self/mountinfo")
	if dev == "" || err != nil {
		return "", false
	}
	for _, m := range mountinfo(ours) {
		if m.dev != dev {
			continue
		}
		rel, err := filepath.Rel(m.root, inFS)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		if p := filepath.Join(m.point, rel); same(p) {
			return p, true
		}
	}
	return "", false
}

// mount is one line of a mountinfo: the device (major:minor), the directory of its
// filesystem mounted, and where.
type mount struct{ dev, root, point string }

func mountinfo(b []byte) []mount {
	var out []mount
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 {
			out = append(out, mount{dev: f[2], root: unescapeMount(f[3]), point: unescapeMount(f[4])})
		}
	}
	return out
}
