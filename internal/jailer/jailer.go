package jailer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultChrootBase is the jailer's own default chroot base directory.
const DefaultChrootBase = "/srv/jailer"

// DefaultNoFile is the open-files limit the jailer applies when none is given.
const DefaultNoFile = 2048

// MaxIDLen is the longest ID the jailer accepts.
const MaxIDLen = 64

// ErrInvalid reports a setting the jailer would refuse.
var ErrInvalid = errors.New("invalid jailer setting")

// Config is one jailer invocation.
type Config struct {
	// ID names the jail: 1 to 64 characters, letters, digits and '-'. It is firecracker's
	// --id too.
	ID string
	// ExecFile is the firecracker binary the jailer copies into the chroot and runs.
	ExecFile string
	// UID and GID are the unprivileged user and group firecracker runs as; never 0.
	UID, GID uint32
	// ChrootBase is the directory under which the jail is built; empty means
	// DefaultChrootBase.
	ChrootBase string
	// NetNS is the path of a network namespace the jailer joins (its TAPs live there);
	// empty keeps the caller's.
	NetNS string
	// CgroupVersion is 1 or 2; 0 leaves the jailer's default (1).
	CgroupVersion int
	// Cgroups are written into the jail's cgroup, as file=value (Limits.Settings builds them).
	Cgroups []Setting
	// ParentCgroup is the cgroup, relative to the hierarchy's root, under which the jail's
	// cgroup <id> is made; empty means the exec file's name.
	ParentCgroup string
	// FSize and NoFile are the rlimits of the same names; 0 leaves the jailer's defaults
	// (no fsize limit, DefaultNoFile open files).
	FSize, NoFile uint64
	// NewPIDNS makes firecracker PID 1 of a new PID namespace (--new-pid-ns).
	NewPIDNS bool
	// Daemonize detaches the jailer (--daemonize). smartvm keeps it false: the guard and the
	// caller then supervise the jailer.
	Daemonize bool
	// Detached lets the jail outlive this process (Launch's guard holds no parent-death
	// signal): a detached VM's. Not a jailer argument.
	Detached bool
	// FirecrackerArgs are firecracker's own arguments, passed after "--"; paths in them are inside the
	// chroot.
	FirecrackerArgs []string
}

// Setting is one cgroup file and the value written to it.
type Setting struct{ File, Value string }

func (s Setting) String() string { return s.File + "=" + s.Value }

// ValidateID checks id against the jailer's rule.
func ValidateID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("%w: id %q must be 1 to %d characters long", ErrInvalid, id, MaxIDLen)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: id %q may hold only letters, digits and '-' (the jailer refuses %q): rename the vm", ErrInvalid, id, c)
		}
	}
	return nil
}

// WarmIDPrefix starts the ID of a warm jail: one started ahead, before the VM that takes it
// is known. VM names never start so (smartvm refuses them), so a warm ID is never a VM's.
const WarmIDPrefix = "smartvm-warm-"

// NewWarmID returns a fresh warm jail ID: WarmIDPrefix and 16 random hex digits.
func NewWarmID() string {
	var b [8]byte
	rand.Read(b[:])
	return WarmIDPrefix + hex.EncodeToString(b[:])
}

// IsWarmID reports whether id has the form NewWarmID gives.
func IsWarmID(id string) bool {
	h, ok := strings.CutPrefix(id, WarmIDPrefix)
	if !ok || len(h) != 16 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// Validate checks what the jailer would refuse, before it runs.
func (c Config) Validate() error {
	if err := ValidateID(c.ID); err != nil {
		return err
	}
	if c.ExecFile == "" || !filepath.IsAbs(c.ExecFile) {
		return fmt.Errorf("%w: exec file %q must be an absolute path", ErrInvalid, c.ExecFile)
	}
	if c.UID == 0 || c.GID == 0 {
		return fmt.Errorf("%w: uid %d gid %d: a jailed firecracker must not run as root (uid or gid 0); pick an unprivileged pair", ErrInvalid, c.UID, c.GID)
	}
	if c.ChrootBase != "" && !filepath.IsAbs(c.ChrootBase) {
		return fmt.Errorf("%w: chroot base %q must be an absolute path", ErrInvalid, c.ChrootBase)
	}
	if c.CgroupVersion != 0 && c.CgroupVersion != 1 && c.CgroupVersion != 2 {
		return fmt.Errorf("%w: cgroup version %d: must be 1 or 2", ErrInvalid, c.CgroupVersion)
	}
	if p := c.ParentCgroup; p != "" && (filepath.IsAbs(p) || filepath.Clean(p) != p || strings.HasPrefix(p, "..")) {
		return fmt.Errorf("%w: parent cgroup %q must be a clean relative path", ErrInvalid, p)
	}
	for _, s := range c.Cgroups {
		if s.File == "" || strings.ContainsAny(s.File, "/=") || strings.Count(s.File, ".") < 1 {
			return fmt.Errorf("%w: cgroup file %q: want <controller>.<file>", ErrInvalid, s.File)
		}
	}
	return nil
}

// Base returns the chroot base, defaulted.
func (c Config) Base() string {
	if c.ChrootBase == "" {
		return DefaultChrootBase
	}
	return c.ChrootBase
}

// ExecName is the exec file's base name: the jail's directory and the name firecracker runs
// under in the chroot.
func (c Config) ExecName() string { return filepath.Base(c.ExecFile) }

// Chroot returns the jail's layout.
func (c Config) Chroot() Chroot {
	return Chroot{Root: filepath.Join(c.Base(), c.ExecName(), c.ID, "root"), ExecName: c.ExecName()}
}

// CgroupParent is the cgroup under which the jail's cgroup is made.
func (c Config) CgroupParent() string {
	if c.ParentCgroup != "" {
		return c.ParentCgroup
	}
	return c.ExecName()
}

// Args returns the jailer's arguments (after the program name), in the order of its usage.
func (c Config) Args() []string {
	a := []string{
		"--id", c.ID,
		"--exec-file", c.ExecFile,
		"--uid", strconv.FormatUint(uint64(c.UID), 10),
		"--gid", strconv.FormatUint(uint64(c.GID), 10),
		"--chroot-base-dir", c.Base(),
	}
	if c.NetNS != "" {
		a = append(a, "--netns", c.NetNS)
	}
	if c.CgroupVersion != 0 {
		a = append(a, "--cgroup-version", strconv.Itoa(c.CgroupVersion))
	}
	for _, s := range c.Cgroups {
		a = append(a, "--cgroup", s.String())
	}
	if c.ParentCgroup != "" {
		a = append(a, "--parent-cgroup", c.ParentCgroup)
	}
	if c.FSize != 0 {
		a = append(a, "--resource-limit", "fsize="+strconv.FormatUint(c.FSize, 10))
	}
	if c.NoFile != 0 {
		a = append(a, "--resource-limit", "no-file="+strconv.FormatUint(c.NoFile, 10))
	}
	if c.Daemonize {
		a = append(a, "--daemonize")
	}
	if c.NewPIDNS {
		a = append(a, "--new-pid-ns")
	}
	if len(c.FirecrackerArgs) > 0 {
		a = append(append(a, "--"), c.FirecrackerArgs...)
	}
	return a
}

// Chroot is a jail's directory layout on the host.
type Chroot struct {
	// Root is <base>/<exec name>/<id>/root, the directory firecracker sees as "/".
	Root string
	// ExecName is the exec file's base name.
	ExecName string
}

// Dir is the jail's own directory, <base>/<exec name>/<id>: removing it removes the jail.
func (c Chroot) Dir() string { return filepath.Dir(c.Root) }

// Host returns the host path of inside, a path as firecracker sees it.
func (c Chroot) Host(inside string) string {
	return filepath.Join(c.Root, filepath.Clean("/"+inside))
}

// Inside returns how firecracker sees host, a path under Root; ok is false for a path outside
// the chroot.
func (c Chroot) Inside(host string) (inside string, ok bool) {
	rel, err := filepath.Rel(c.Root, filepath.Clean(host))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return filepath.Join("/", rel), true
}

// PIDFile is where the jailer writes firecracker's pid (in the jailer's PID namespace).
func (c Chroot) PIDFile() string { return filepath.Join(c.Root, c.ExecName+".pid") }
