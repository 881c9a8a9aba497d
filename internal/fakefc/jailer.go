package fakefc

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Environment variables the fake jailer passes to the fake firecracker it runs: the chroot
// to enter and the uid and gid to become, once the process runs (a Go test binary cannot
// be run from inside a chroot that lacks its shared libraries, so the fake firecracker
// enters the jail itself, first thing, before it reads any argument).
const (
	EnvJailRoot = "SMARTVM_FAKEFC_JAIL_ROOT"
	EnvJailUID  = "SMARTVM_FAKEFC_JAIL_UID"
	EnvJailGID  = "SMARTVM_FAKEFC_JAIL_GID"
)

// FakeJailerFile is a JSON record the fake jailer writes in the jail's directory
// (<base>/<exec name>/<id>/, beside root/): what it parsed, for tests to check. The real
// jailer writes no such file; it is owned by root, like the rest of that directory.
const FakeJailerFile = "fake-jailer.json"

// JailerConfig is the fake jailer's parsed command line.
type JailerConfig struct {
	ID            string   `json:"id"`
	ExecFile      string   `json:"exec_file"`
	UID           uint32   `json:"uid"`
	GID           uint32   `json:"gid"`
	ChrootBase    string   `json:"chroot_base"`
	NetNS         string   `json:"netns,omitempty"`
	CgroupVersion int      `json:"cgroup_version"`
	Cgroups       []string `json:"cgroups,omitempty"`
	ParentCgroup  string   `json:"parent_cgroup,omitempty"`
	FSize         uint64   `json:"fsize,omitempty"`
	NoFile        uint64   `json:"no_file"`
	Daemonize     bool     `json:"daemonize,omitempty"`
	NewPIDNS      bool     `json:"new_pid_ns,omitempty"`
	Args          []string `json:"args,omitempty"`
}

// Chroot is <base>/<exec name>/<id>/root, the exec name being the resolved exec file's.
func (c *JailerConfig) Chroot() string {
	return filepath.Join(c.ChrootBase, filepath.Base(c.ExecFile), c.ID, "root")
}

// jailerError is the text of the jailer's "Jailer error: ..." panics.
type jailerError string

func (e jailerError) Error() string { return string(e) }

// parseJailerArgs parses the jailer's command line (src/jailer/src/main.rs and env.rs) for
// release rel, and checks it as the jailer does before it touches anything: required
// arguments, the ID rule, an existing exec file (named "...firecracker..." before v1.13) and
// chroot base, numeric ids, cgroup and resource-limit syntax.
func parseJailerArgs(rel *release, argv []string) (*JailerConfig, error) {
	c := &JailerConfig{ChrootBase: "/srv/jailer", CgroupVersion: 1, NoFile: 2048}
	if i := slices.Index(argv, "--"); i >= 0 {
		c.Args = slices.Clone(argv[i+1:])
		argv = argv[:i]
	}
	seen := map[string]bool{}
	var uid, gid string
	for i := 0; i < len(argv); i++ {
		name, ok := strings.CutPrefix(argv[i], "--")
		if !ok {
			return nil, jailerError(fmt.Sprintf("Arguments parsing error: Found argument '%s' which wasn't expected, or isn't valid in this context.", argv[i]))
		}
		switch name {
		case "daemonize":
			c.Daemonize = true
			continue
		case "new-pid-ns":
			c.NewPIDNS = true
			continue
		}
		multi := name == "cgroup" || name == "resource-limit"
		known := slices.Contains([]string{"id", "exec-file", "uid", "gid", "chroot-base-dir", "netns", "cgroup-version", "parent-cgroup"}, name)
		if !multi && !known {
			return nil, jailerError(fmt.Sprintf("Arguments parsing error: Found argument '%s' which wasn't expected, or isn't valid in this context.", argv[i]))
		}
		if i+1 >= len(argv) {
			return nil, jailerError(fmt.Sprintf("Arguments parsing error: The argument '--%s' requires a value but none was supplied", name))
		}
		if seen[name] && !multi {
			return nil, jailerError(fmt.Sprintf("Arguments parsing error: The argument '--%s' was provided more than once.", name))
		}
		seen[name] = true
		i++
		v := argv[i]
		switch name {
		case "id":
			c.ID = v
		case "exec-file":
			c.ExecFile = v
		case "uid":
			uid = v
		case "gid":
			gid = v
		case "chroot-base-dir":
			c.ChrootBase = v
		case "netns":
			c.NetNS = v
		case "parent-cgroup":
			c.ParentCgroup = v
		case "cgroup-version":
			n, err := strconv.Atoi(v)
			if err != nil || (n != 1 && n != 2) {
				return nil, jailerError("Cgroup error: invalid cgroup version " + v)
			}
			c.CgroupVersion = n
		case "cgroup":
			file, val, ok := strings.Cut(v, "=")
			if !ok || val == "" || !strings.Contains(file, ".") || strings.Contains(file, "/") {
				return nil, jailerError("Invalid format for cgroups: " + v)
			}
			c.Cgroups = append(c.Cgroups, v)
		case "resource-limit":
			rname, val, ok := strings.Cut(v, "=")
			if !ok {
				return nil, jailerError("Invalid format for resources limits: " + v)
			}
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return nil, jailerError(fmt.Sprintf("Invalid limit value for resource: %s: %v", val, err))
			}
			switch rname {
			case "fsize":
				c.FSize = n
			case "no-file":
				c.NoFile = n
			default:
				return nil, jailerError("Invalid resource argument: " + rname)
			}
		}
	}
	for _, req := range []string{"id", "exec-file", "uid", "gid"} {
		if !seen[req] {
			return nil, jailerError(fmt.Sprintf("Arguments parsing error: Missing mandatory argument: %s", req))
		}
	}
	if msg := checkInstanceID(c.ID); msg != "" {
		return nil, jailerError("Invalid instance ID: " + msg)
	}
	for _, id := range []struct {
		s   string
		dst *uint32
	}{{uid, &c.UID}, {gid, &c.GID}} {
		n, err := strconv.ParseUint(id.s, 10, 32)
		if err != nil {
			return nil, jailerError(fmt.Sprintf("Invalid uid/gid: %s", id.s))
		}
		*id.dst = uint32(n)
	}
	exec, err := filepath.EvalSymlinks(c.ExecFile)
	if err == nil {
		exec, err = filepath.Abs(exec)
	}
	if err != nil {
		return nil, jailerError(fmt.Sprintf("Failed to canonicalize path %s: %v", c.ExecFile, osError(err)))
	}
	if fi, err := os.Stat(exec); err != nil || !fi.Mode().IsRegular() {
		return nil, jailerError("Invalid file: " + c.ExecFile)
	}
	// Like the real jailer, name the jail after the file found (a test hard-links its binary
	// under the name it runs as: testutil.HardLink).
	c.ExecFile = exec
	if !rel.atLeast(13) && !strings.Contains(filepath.Base(c.ExecFile), "firecracker") {
		return nil, jailerError(fmt.Sprintf("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": %s", filepath.Base(c.ExecFile)))
	}
	base, err := filepath.EvalSymlinks(c.ChrootBase)
	if err != nil {
		return nil, jailerError(fmt.Sprintf("Failed to canonicalize path %s: %v", c.ChrootBase, osError(err)))
	}
	c.ChrootBase = base
	return c, nil
}
