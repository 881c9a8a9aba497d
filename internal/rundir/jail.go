package rundir

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/smartvm/smartvm/internal/jailer"
)

// Jail records a VM whose firecracker runs under Firecracker's jailer: where its chroot is
// and who it runs as, so that another process can recognise its firecracker and reaping can
// remove the jail.
type Jail struct {
	// UID and GID are the jail's user and group.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Chroot is the host path of the jail's root, <base>/<exec name>/<VM name>/root.
	Chroot string `json:"chroot"`
	// ExecName is the firecracker binary's name in the chroot.
	ExecName string `json:"exec_name"`
	// APISocket is the API socket's path inside the chroot.
	APISocket string `json:"api_socket"`
	// GuardPID and GuardStart identify the jail's guard (the init of its PID namespace),
	// which reaping kills when it outlived its owner (a detached VM's).
	GuardPID   int    `json:"guard_pid,omitempty"`
	GuardStart uint64 `json:"guard_start,omitempty"`
	// CgroupDirs are the cgroup directories the jail's limits made.
	CgroupDirs []string `json:"cgroup_dirs,omitempty"`
	// Owners records files lent to the jail (its owner's serialisation), given back when
	// it is removed.
	Owners json.RawMessage `json:"owners,omitempty"`
	// WarmID names the warm jail this VM's jail is being taken from (smartvm.Manager.WarmJails)
	// while the hand-over runs: until it is done, the jail's directory may still be
	// <base>/<exec name>/<WarmID> and its uid leased to WarmID, and reaping removes both.
	WarmID string `json:"warm_id,omitempty"`
}

// Host maps a path inside the jail to the host.
func (j *Jail) Host(inside string) string { return filepath.Join(j.Chroot, filepath.Clean("/"+inside)) }

// check refuses a jail record that cannot be the VM name's: a chroot that is not a clean
// absolute <base>/<exec name>/<name>/root, or names that are not plain.
func (j *Jail) check(name string) error {
	c := j.Chroot
	switch {
	case !filepath.IsAbs(c) || filepath.Clean(c) != c || filepath.Base(c) != "root" || filepath.Base(filepath.Dir(c)) != name:
		return fmt.Errorf("jail chroot %q is not <base>/<exec>/%s/root", c, name)
	case filepath.Base(filepath.Dir(filepath.Dir(c))) != j.ExecName || j.ExecName == "" || strings.ContainsAny(j.ExecName, "/\x00"):
		return fmt.Errorf("jail exec name %q does not match its chroot %q", j.ExecName, c)
	case j.UID == 0 || j.GID == 0:
		return fmt.Errorf("jail runs as uid %d gid %d: never root", j.UID, j.GID)
	case !filepath.IsAbs(j.APISocket) || filepath.Clean(j.APISocket) != j.APISocket:
		return fmt.Errorf("jail api socket %q is not a clean absolute path", j.APISocket)
	case j.WarmID != "" && !jailer.IsWarmID(j.WarmID):
		return fmt.Errorf("jail warm id %q is not a warm jail's", j.WarmID)
	}
	return nil
}

// jailPaths points the paths firecracker itself writes into the jail: its API socket, log,
// metrics, config file and MMDS data, the vsock socket and the staged drives. Its console
// (serial.log), stderr and serial input stay in the VM's directory: they are this process's
// files, handed to firecracker as its stdio.
func (p Paths) jailPaths(j *Jail) Paths {
	p.APISocket = j.Host(j.APISocket)
	p.Log = j.Host(LogFile)
	p.Metrics = j.Host(MetricsFile)
	p.Config = j.Host(ConfigFile)
	p.Metadata = j.Host(MetadataFile)
	p.Vsock = j.Host(VsockFile)
	p.Drives = j.Host(DrivesDir)
	return p
}

// UseJail points d's paths into the jail j describes (jailPaths): the ones firecracker
// writes are then where it sees them.
func (d *Dir) UseJail(j *Jail) { d.Paths = d.Paths.jailPaths(j) }
