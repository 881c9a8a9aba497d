package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
	"golang.org/x/sys/unix"
)

// jailAPISocket is the API socket's path inside a jail.
const jailAPISocket = "/run/" + rundir.SocketFile

// startJail is a start's jail while it is built.
type startJail struct {
	bin  string // the jailer
	cfg  jailer.Config
	tree *jailer.Tree
	rec  *rundir.Jail
	// cgroupDirs are the cgroups the limits made.
	cgroupDirs []string
	// guard, for an owned VM, waits for the jail's guard, started while the jail is
	// prepared (jailer.GoStartGuard).
	guard func() (*jailer.Guard, error)
	// lease names the holder of the jail's leased uid: the VM's name, or a warm jail's ID
	// until a VM takes it; "" for a uid of the spec's.
	lease string
}

// jailerBinary resolves the manager's jailer, WithJailerBinary, else "jailer" beside the
// firecracker binary, to the identity of its absolute path.
func (mgr *Manager) jailerBinary(firecracker string) (binaryKey, error) {
	bin := mgr.jail.binary
	if bin == "" {
		bin = filepath.Join(filepath.Dir(firecracker), "jailer")
	}
	if !strings.ContainsRune(bin, '/') {
		p, err := exec.LookPath(bin)
		if err != nil {
			return binaryKey{}, fmt.Errorf("%w: jailer %q not found in PATH: install Firecracker's jailer (smartvm setup does) or name it with WithJailerBinary: %w", ErrJailer, bin, err)
		}
		bin = p
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return binaryKey{}, fmt.Errorf("%w: jailer %s: %w", ErrJailer, bin, err)
	}
	key, fi, err := probeKey(abs)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return binaryKey{}, fmt.Errorf("%w: no jailer executable at %s: install the jailer of firecracker's release beside it (smartvm setup does), or name one with WithJailerBinary", ErrJailer, bin)
	}
	key.Kind = "jailer"
	return key, nil
}

// Jailer returns the jailer the manager runs jailed VMs with (WithJailerBinary, else the
// "jailer" beside its firecracker) and its version, after checking that it is of firecracker's
// release. Both versions are probed once per binary (path, inode, size and modification time)
// and cached in the runtime root, as Start does, so asking costs no process once known.
func (mgr *Manager) Jailer(ctx context.Context) (path string, version fcapi.Version, err error) {
	fc, fv, err := mgr.Firecracker(ctx)
	if err != nil {
		return "", fcapi.Version{}, err
	}
	return mgr.jailerFor(ctx, fc, fv)
}

// jailerFor finds the jailer for firecracker fc of version fv and checks its release.
func (mgr *Manager) jailerFor(ctx context.Context, fc string, fv fcapi.Version) (string, fcapi.Version, error) {
	key, err := mgr.jailerBinary(fc)
	if err != nil {
		return "", fcapi.Version{}, err
	}
	// Probed once per jailer binary, as firecracker's version is: `jailer --version` is a
	// whole process before every jailed start.
	jv, err := mgr.probedVersion(ctx, key, jailer.Version)
	if err != nil {
		return "", fcapi.Version{}, fmt.Errorf("%w: %w", ErrJailer, err)
	}
	if err := jailer.CheckVersion(key.Path, jv, fc, fv); err != nil {
		return "", fcapi.Version{}, fmt.Errorf("%w: %w", ErrJailer, err)
	}
	return key.Path, jv, nil
}

// prepareJail readies the jail before anything is placed in it: the jailer (of firecracker's
// release), the uid and gid, the cgroups and the chroot, and points the VM's paths that
// firecracker writes into the chroot. Each step pushes its undo.
func (s *starter) prepareJail(ctx context.Context) error {
	js := s.spec.Jailer
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: the jailer needs root (it chroots and changes its uid): run as root, or without the jailer", ErrJailer)
	}
	if v := s.spec.Vsock; v != nil && v.Path != "" {
		return fmt.Errorf("%w: a jailed firecracker creates its vsock socket in its chroot; leave vsock.path empty (the socket is then the VM's vsock socket)", ErrJailer)
	}
	bin, jv, err := s.mgr.jailerFor(ctx, s.bin, s.version)
	if err != nil {
		return err
	}
	exe := s.exe
	if exe == "" {
		exe = s.bin
	}
	if name := filepath.Base(exe); !s.version.AtLeast(fcapi.Version{Major: 1, Minor: 13}) && !strings.Contains(name, "firecracker") {
		return fmt.Errorf("%w: jailer v%s runs only an executable whose name contains \"firecracker\", not %s: rename or link it", ErrJailer, jv, name)
	}
	cfg := jailer.Config{ID: s.spec.Name, ExecFile: exe, UID: js.UID, GID: js.GID, ChrootBase: js.ChrootBase,
		ParentCgroup: js.ParentCgroup, FSize: js.FSize, NoFile: js.NoFile, NewPIDNS: !js.SharedPIDNamespace}
	if err := jailer.ValidateID(cfg.ID); err != nil {
		return err
	}
	if p := cfg.Chroot().Host(jailAPISocket); len(p) > MaxSocketPath {
		return fmt.Errorf("%w: the jail's api socket %s is %d bytes, more than the %d a Unix socket allows: use a shorter chroot base or VM name", ErrJailer, p, len(p), MaxSocketPath)
	}
	if w := s.mgr.takeWarm(s); w != nil {
		if err := s.adoptWarm(ctx, w); err != nil {
			w.closeFiles()
			return err
		}
		return nil
	}
	var guard func() (*jailer.Guard, error)
	if !s.opts.detached {
		// The guard needs nothing of what follows: it starts meanwhile. A detached VM's
		// starts at launch, so that the time in which this process's death could leave it
		// behind unrecorded (it has no parent-death signal) stays short.
		guard = jailer.GoStartGuard(false)
		s.push(func(context.Context) error {
			if g, err := guard(); err == nil {
				return g.Close() // a no-op once the launched jail's Close has run
			}
			return nil
		})
	}
	s.jail = &startJail{bin: bin, guard: guard}
	if cfg.UID == 0 {
		uid, err := s.leaseJailID(ctx)
		if err != nil {
			return err
		}
		cfg.UID, cfg.GID = uid, uid
	}
	if err := s.jailCgroups(&cfg); err != nil {
		return err
	}
	tree, err := jailer.Prepare(cfg)
	if err != nil {
		return err
	}
	s.push(func(context.Context) error { return errors.Join(tree.Remove(), tree.Close()) })
	s.jail.cfg, s.jail.tree = cfg, tree
	s.jail.rec = &rundir.Jail{UID: cfg.UID, GID: cfg.GID, Chroot: tree.Chroot().Root, ExecName: cfg.ExecName(),
		APISocket: jailAPISocket, CgroupDirs: s.jail.cgroupDirs}
	if err := tree.Mkdir("run"); err != nil {
		return err
	}
	if err := tree.Mkdir(rundir.DrivesDir); err != nil {
		return err
	}
	s.dir.UseJail(s.jail.rec)
	// Recorded at once: if this process dies before firecracker runs, reaping finds the jail
	// (chroot, cgroups, uid lease) in state.json and removes it.
	if err := s.dir.WriteState(s.state()); err != nil {
		return err
	}
	s.log.Debug("jail prepared", "chroot", s.jail.rec.Chroot, "uid", cfg.UID, "gid", cfg.GID, "cgroups", cfg.Cgroups)
	return nil
}

// leaseJailID leases a uid for the VM from the manager's range, released with the VM.
func (s *starter) leaseJailID(ctx context.Context) (uint32, error) {
	ids, err := s.mgr.jailIDs()
	if err != nil {
		return 0, err
	}
	uid, err := ids.Allocate(ctx, s.spec.Name)
	if err != nil {
		ids.Close()
		return 0, err
	}
	sj := s.jail
	sj.lease = s.spec.Name
	// The holder is read when the lease ends: a warm jail's passes to the VM that takes it.
	s.push(func(ctx context.Context) error { defer ids.Close(); return ids.Release(ctx, sj.lease) })
	return uid, nil
}

// jailIDsDir is the lease directory of jail uids in the runtime root.
const jailIDsDir = "jail-ids"

// jailIDs opens the runtime root's jail uid leases; the caller closes them.
func (mgr *Manager) jailIDs() (*jailer.IDs, error) {
	root, err := safedir.OpenTrusted(mgr.root.Path(), false)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return jailer.OpenIDs(root, jailIDsDir, mgr.jail.firstID, mgr.jail.countIDs)
}

// reclaimJailIDs releases the uid leases whose holder has no directory in the runtime root: a
// VM or warm jail whose process died after it leased a uid and before its state.json recorded
// the jail (reaping a recorded jail releases its lease itself). It holds root.lock, under which
// directories are made, so a lease being taken always has its holder's directory.
func (mgr *Manager) reclaimJailIDs(ctx context.Context) error {
	if _, err := os.Lstat(filepath.Join(mgr.root.Path(), jailIDsDir)); errors.Is(err, os.ErrNotExist) {
		return nil // no jailed VM here ever
	}
	ids, err := mgr.jailIDs()
	if err != nil {
		return err
	}
	defer ids.Close()
	return mgr.root.Locked(ctx, func() error {
		released, err := ids.ReleaseUnheld(ctx, mgr.root.Has)
		if len(released) > 0 {
			mgr.log.Info("released the jail uids of vms that died before recording them", "holders", released)
		}
		return err
	})
}

// jailCgroups puts the spec's limits where the host's cgroup layout has them, and records the
// cgroup directories that the jail will have (startJail.cgroupDirs), removed with it.
func (s *starter) jailCgroups(cfg *jailer.Config) error {
	js := s.spec.Jailer
	lim := js.limits()
	if lim.IsZero() && js.CgroupVersion == 0 {
		return nil
	}
	layout, err := jailer.DetectCgroups()
	if err != nil {
		return err
	}
	cfg.CgroupVersion = js.CgroupVersion
	if cfg.CgroupVersion == 0 {
		cfg.CgroupVersion = layout.Version()
	}
	if cfg.Cgroups, err = layout.Settings(cfg.CgroupVersion, lim); err != nil {
		return fmt.Errorf("%w: %w", ErrJailer, err)
	}
	sj := s.jail
	sj.cgroupDirs = layout.CgroupDirs(*cfg)
	// Read when the jail ends: a warm jail's directories take the name of the VM that takes it.
	s.push(func(ctx context.Context) error { return jailer.RemoveCgroups(ctx, sj.cgroupDirs...) })
	if err := jailer.PrepareCgroups(layout, *cfg); err != nil {
		return fmt.Errorf("%w: %w", ErrJailer, err)
	}
	return nil
}

// jailConfig puts the kernel, initrd and drives into the jail and rewrites cfg's paths as
// firecracker sees them; the files smartvm made in the jail (log, metrics, staged drives)
// become the jail's.
func (s *starter) jailConfig(ctx context.Context, cfg *fcapi.VMConfig) error {
	tr, ch := s.jail.tree, s.jail.tree.Chroot()
	place := func(path, name string, kind jailer.Kind, device bool) (string, error) {
		if inside, ok := ch.Inside(path); ok { // staged into the jail already
			return inside, tr.Own(strings.TrimPrefix(inside, "/"))
		}
		f, err := safedir.OpenInput(path, kind == jailer.Persistent, device)
		if err != nil {
			return "", err
		}
		defer f.Close()
		return tr.Place(ctx, f, path, name, kind)
	}
	if err := s.ownJailLogs(); err != nil {
		return err
	}
	var err error
	if s.snapshot() != nil {
		return s.jailRestore(ctx, place)
	}
	if b := cfg.BootSource; b != nil {
		if b.KernelImagePath, err = place(b.KernelImagePath, "vmlinux", jailer.ReadOnly, false); err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
		if b.InitrdPath != "" {
			if b.InitrdPath, err = place(b.InitrdPath, "initrd", jailer.ReadOnly, false); err != nil {
				return fmt.Errorf("initrd: %w", err)
			}
		}
	}
	for i, d := range cfg.Drives {
		kind := jailer.Persistent
		if d.IsReadOnly {
			kind = jailer.ReadOnly
		}
		if cfg.Drives[i].PathOnHost, err = place(d.PathOnHost, "drive-"+d.DriveID, kind, true); err != nil {
			return fmt.Errorf("drive %s: %w", d.DriveID, err)
		}
	}
	if v := cfg.Vsock; v != nil {
		v.UDSPath, _ = ch.Inside(v.UDSPath)
	}
	owners, _ := json.Marshal(tr.Owners()) // []Owner always marshals
	s.jail.rec.Owners = owners
	return nil
}

// ownJailLogs gives firecracker's log and metrics files, made in the chroot, to the jail.
func (s *starter) ownJailLogs() error {
	tr, ch := s.jail.tree, s.jail.tree.Chroot()
	for _, p := range []string{s.dir.Log, s.dir.Metrics} {
		if in, ok := ch.Inside(p); ok {
			if err := tr.Own(strings.TrimPrefix(in, "/")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// jailRestore puts a restore's drives into the jail where the snapshot's VM had them: the
// restaged copies of ephemeral drives (in the chroot already) become the jail's, and
// persistent and read-only drives are placed under the names Start gave them.
func (s *starter) jailRestore(ctx context.Context, place func(path, name string, kind jailer.Kind, device bool) (string, error)) error {
	for id := range s.snapshot().Drives {
		if err := s.jail.tree.Own(rundir.DrivesDir + "/" + id + ".img"); err != nil {
			return fmt.Errorf("drive %s: %w", id, err)
		}
	}
	for _, d := range s.spec.Drives {
		if d.Ephemeral() {
			continue
		}
		kind := jailer.Persistent
		if d.ReadOnly {
			kind = jailer.ReadOnly
		}
		if _, err := place(d.Path, "drive-"+d.ID, kind, true); err != nil {
			return fmt.Errorf("drive %s: %w", d.ID, err)
		}
	}
	s.jail.rec.Owners, _ = json.Marshal(s.jail.tree.Owners()) // []Owner always marshals
	return nil
}

// listenInJail listens on the socket name in the jail's chroot, for firecracker to connect
// to, and returns its path as firecracker sees it.
func (s *starter) listenInJail(name string) (*net.UnixListener, string, error) {
	return s.jail.tree.ListenUnix(name)
}

// mergeIntoJail merges a diff chain's memory files (the full base first) into a file of the
// jail's uid in its chroot, made through the jail's handle, and returns its path as
// firecracker sees it. The merge is written where firecracker reads it: nothing is copied
// after.
func (s *starter) mergeIntoJail(files []*os.File) (string, error) {
	out, err := s.jail.tree.NewFile(jailMergedMemory)
	if err != nil {
		return "", err
	}
	if err := mergeChain(out, files); err != nil {
		return "", fmt.Errorf("in the jail: %w", err)
	}
	return "/" + jailMergedMemory, nil
}

// jailSnapshotFiles puts a snapshot's state file, and with withMem its memory file, into the
// jail for a restore to load, and returns their paths as firecracker sees them (memPath as it
// is without withMem). No jail gets either file as its own: a snapshot may serve as a
// template, whose clones run at once with a restore under the VM's own name, and one jail
// could then change what another maps or the next one loads. The state file is copied; the
// memory file is shared read-only (jailer.Shared: hard-linked, with an ACL entry for the
// jail's uid, taken away when the VM ends; clones share its pages in the page cache).
// state.json is rewritten so that reaping takes the entry away too.
func (s *starter) jailSnapshotFiles(ctx context.Context, statePath, memPath string, withMem bool) (string, string, error) {
	tr := s.jail.tree
	kinds := [2]jailer.Kind{jailer.Ephemeral, jailer.Shared}
	inside := [2]string{1: memPath}
	files := []string{statePath}
	if withMem {
		files = append(files, memPath)
	}
	for i, p := range files {
		f, err := openNoFollow(p)
		if err != nil {
			return "", "", err
		}
		name := "snapshot-" + filepath.Base(p)
		inside[i], err = tr.Place(ctx, f, p, name, kinds[i])
		f.Close()
		if err != nil {
			return "", "", fmt.Errorf("put %s into the jail: %w", p, err)
		}
	}
	s.jail.rec.Owners, _ = json.Marshal(tr.Owners()) // []Owner always marshals
	if err := s.dir.WriteState(s.state()); err != nil {
		return "", "", err
	}
	return inside[0], inside[1], nil
}

// jailSnapshotTargets, for a jailed VM, creates the files firecracker writes a snapshot to in
// its chroot and returns their paths as it sees them, and a function that moves them, once
// written, to stateDst and memDst (which it replaces). For a VM without a jail it returns the
// destinations themselves and a function that does nothing.
func (m *Machine) jailSnapshotTargets(stateDst, memDst string) (statePath, memPath string, finish func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	rec := m.record()
	if rec.st.Jail == nil {
		return stateDst, memDst, nothing, nil
	}
	cfg, err := m.mgr.recordedJail(context.Background(), m.name, rec.state())
	if err != nil {
		return "", "", nil, err
	}
	tr, err := jailer.OpenJail(cfg)
	if err != nil {
		return "", "", nil, err
	}
	names := [2]string{"snapshot.state", "snapshot.mem"}
	for _, n := range names {
		if err := tr.CreateFile(n); err != nil {
			tr.Close()
			return "", "", nil, err
		}
	}
	finish = func(ctx context.Context) error {
		defer tr.Close()
		var errs []error
		for i, dst := range []string{stateDst, memDst} {
			if err := removeIfExists(dst); err != nil {
				errs = append(errs, err)
				continue
			}
			errs = append(errs, tr.Retrieve(ctx, names[i], dst))
		}
		return errors.Join(errs...)
	}
	return "/" + names[0], "/" + names[1], finish, nil
}

// launchJailed starts firecracker through the jailer with pc's stdio and namespace. pc.Args
// are firecracker's arguments with host paths: those in the chroot are passed as firecracker
// sees them, and --id is left to the jailer, which passes it itself. Files that firecracker
// reads from the jail (config file, MMDS data) become the jail's.
func (s *starter) launchJailed(pc proc.Config) (*proc.Process, error) {
	ch := s.jail.tree.Chroot()
	var args []string
	for i := 0; i < len(pc.Args); i++ {
		a := pc.Args[i]
		if a == "--id" && i+1 < len(pc.Args) {
			i++
			continue
		}
		if in, ok := ch.Inside(a); ok && filepath.IsAbs(a) {
			if a != s.dir.APISocket && a != s.dir.Log && a != s.dir.Metrics {
				if err := s.jail.tree.Own(strings.TrimPrefix(in, "/")); err != nil {
					return nil, err
				}
			}
			a = in
		}
		args = append(args, a)
	}
	cfg := s.jail.cfg
	cfg.FirecrackerArgs = args
	cfg.Detached = s.opts.detached
	// The jailer closes every descriptor above stderr: the drive locks are held here instead.
	if err := s.holdDriveLocks(pc.ExtraFiles); err != nil {
		return nil, err
	}
	pc.ExtraFiles = nil
	var j *jailer.Jail
	var err error
	if s.jail.guard != nil {
		var g *jailer.Guard
		if g, err = s.jail.guard(); err != nil {
			return nil, err
		}
		j, err = jailer.LaunchIn(g, s.jail.bin, cfg, pc)
	} else {
		j, err = jailer.Launch(s.jail.bin, cfg, pc)
	}
	if err != nil {
		return nil, err
	}
	s.push(func(context.Context) error { return j.Close() })
	s.jail.rec.GuardPID, s.jail.rec.GuardStart = j.Guard.PID(), j.Guard.StartTime()
	return j.Firecracker, nil
}

// holdDriveLocks holds the locks of drives (files) that a jailed firecracker cannot inherit, by
// duplicates (one open file, one lock), until the VM ends.
func (s *starter) holdDriveLocks(files []*os.File) error {
	var held []*os.File
	s.push(func(context.Context) error {
		for _, f := range held {
			f.Close()
		}
		return nil
	})
	for _, f := range files {
		// Close-on-exec from the start: a process forked meanwhile must not inherit the lock.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("hold drive lock: %w", err)
		}
		held = append(held, os.NewFile(uintptr(fd), f.Name()))
	}
	return nil
}

// jailRecord is what state.json records of the jail, if any.
func (s *starter) jailRecord() *rundir.Jail {
	if s.jail == nil {
		return nil
	}
	return s.jail.rec
}

// recordedJail returns the jail configuration of the jail st records for VM name, after
// checking that it is the jail smartvm makes for that VM: its chroot under the chroot base
// the VM's spec names (or the default), and a uid that is the spec's own or the one leased to
// the name. A record is data: it never picks the tree that is removed, or the uid files are
// given to.
func (mgr *Manager) recordedJail(ctx context.Context, name string, st *rundir.State) (jailer.Config, error) {
	j := st.Jail
	var spec MachineSpec
	if err := json.Unmarshal(st.Spec, &spec); err != nil || spec.Jailer == nil {
		return jailer.Config{}, fmt.Errorf("jail of vm %s: state.json records a jail its spec does not ask for; left alone", name)
	}
	base := spec.Jailer.ChrootBase
	if base == "" {
		base = DefaultChrootBase
	}
	cfg := jailer.Config{ID: name, ExecFile: "/" + j.ExecName, UID: j.UID, GID: j.GID, ChrootBase: base,
		ParentCgroup: spec.Jailer.ParentCgroup}
	if cfg.Chroot().Root != j.Chroot {
		return jailer.Config{}, fmt.Errorf("jail of vm %s: recorded chroot %s is not %s, where the spec puts it; left alone", name, j.Chroot, cfg.Chroot().Root)
	}
	if js := spec.Jailer; js.UID != 0 {
		if j.UID != js.UID || j.GID != js.GID {
			return jailer.Config{}, fmt.Errorf("jail of vm %s: recorded uid %d:%d is not the spec's %d:%d; left alone", name, j.UID, j.GID, js.UID, js.GID)
		}
		return cfg, nil
	}
	ids, err := mgr.jailIDs()
	if err != nil {
		return jailer.Config{}, err
	}
	defer ids.Close()
	leases, err := ids.Leases(ctx)
	if err != nil {
		return jailer.Config{}, err
	}
	switch holder := leases[j.UID]; {
	case j.GID != j.UID:
	case j.WarmID != "" && mgr.root.Held(j.WarmID):
		// The warm jail a record names belongs to a live process: a hand-over cut short is
		// one whose taker, the warm jail's owner too, is dead.
		return jailer.Config{}, fmt.Errorf("jail of vm %s: recorded warm jail %s is a live process's; left alone", name, j.WarmID)
	case holder == name:
		return cfg, nil
	case jailer.IsWarmID(name) && holder != "":
		// A warm jail that a VM took: the jail and its lease are the VM's, and its record
		// reaps them.
		return jailer.Config{}, errHandedOver
	case j.WarmID != "" && (holder == j.WarmID || holder == ""), jailer.IsWarmID(name) && holder == "":
		// A hand-over cut short (adoptWarm): the lease is still the warm jail's, or was
		// ended by the reaping of the other record.
		return cfg, nil
	}
	return jailer.Config{}, fmt.Errorf("jail of vm %s: recorded uid %d:%d is not the one leased to it; left alone", name, j.UID, j.GID)
}

// errHandedOver is recordedJail's answer for the record of a warm jail that a VM took.
var errHandedOver = errors.New("the warm jail was taken by a vm")

// reapJail removes what a dead jailed VM left outside its directory: files lent to the jail
// go back to their owners, the chroot and the cgroups go, and its uid lease ends.
func (mgr *Manager) reapJail(ctx context.Context, name string, st *rundir.State) error {
	j := st.Jail
	if j == nil {
		return nil
	}
	// The record is checked before any of it is acted on, its guard pid included: a record
	// that fails the check is left alone entirely (rm -f finds a jail by proof instead).
	cfg, err := mgr.recordedJail(ctx, name, st)
	if errors.Is(err, errHandedOver) {
		return nil
	}
	if err != nil {
		return err
	}
	// The guard of a detached VM outlives its owner: its namespace is empty by now.
	errs := []error{jailer.KillGuard(j.GuardPID, j.GuardStart)}
	if base, err := safedir.OpenTrusted(cfg.Base(), false); err == nil {
		var owners []jailer.Owner
		if len(j.Owners) > 0 {
			errs = append(errs, json.Unmarshal(j.Owners, &owners))
		}
		errs = append(errs, jailer.GiveBack(base, cfg, owners), jailer.RemoveJail(base, cfg))
		if j.WarmID != "" { // a hand-over cut short: the jail may not have moved yet
			warm := cfg
			warm.ID = j.WarmID
			errs = append(errs, jailer.RemoveJail(base, warm))
		}
		base.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if len(j.CgroupDirs) > 0 {
		layout, err := jailer.DetectCgroups()
		errs = append(errs, err)
		// Only the directories the jailer makes for this VM's jail on this host's cgroup
		// mounts, and only as directories (rmdir, which removes nothing else).
		var dirs []string
		warm := cfg
		warm.ID = j.WarmID
		for _, d := range j.CgroupDirs {
			if err == nil && layout.IsCgroupDir(cfg, d) {
				dirs = append(dirs, d)
				// A hand-over cut short: the cgroup may not have taken the VM's name yet.
				if twin := filepath.Join(filepath.Dir(d), j.WarmID); j.WarmID != "" && layout.IsCgroupDir(warm, twin) {
					dirs = append(dirs, twin)
				}
			}
		}
		errs = append(errs, jailer.RemoveCgroups(ctx, dirs...))
	}
	if ids, err := mgr.jailIDs(); err == nil {
		errs = append(errs, ids.Release(ctx, name))
		if j.WarmID != "" {
			errs = append(errs, ids.Release(ctx, j.WarmID))
		}
		errs = append(errs, ids.Close())
	} else {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// lendToJail gives path, a socket smartvm made in a jailed VM's chroot for firecracker to
// connect to (a vsock listener's), to the jail's uid, without following a symlink. For a VM
// without a jail it does nothing.
func (m *Machine) lendToJail(path string) error {
	_, st, err := m.mgr.root.Lookup(m.name)
	if err != nil || st.Jail == nil {
		return nil
	}
	cfg, err := m.mgr.recordedJail(context.Background(), m.name, st)
	if err != nil {
		return err
	}
	name, inside := cfg.Chroot().Inside(path)
	if !inside {
		return nil
	}
	// Through the jail's tree, held open: the chroot is the jail uid's, and a name looked up
	// again could lead elsewhere by now.
	tr, err := jailer.OpenJail(cfg)
	if err != nil {
		return err
	}
	defer tr.Close()
	if err := tr.OwnSocket(strings.TrimPrefix(name, "/")); err != nil {
		return fmt.Errorf("give %s to the jail: %w", path, err)
	}
	return nil
}

// forcedJails are the jails ForceRemove found of a VM without its record (killJailed), to
// remove once their processes have ended.
type forcedJails struct {
	name  string
	found []jailer.Found
}

// killJailed finds VM name's jailed firecracker without trusting its state.json, for
// ForceRemove: a process of the uid leased to the name, started with --id name, whose root is
// the jail's chroot <base>/<exec name>/<name>/root (jailer.FindJailed). It kills each (and the
// guard of its PID namespace) and waits while ctx allows, at most 5 s, for it to end. A jail
// that runs as a uid its spec named, not a leased one, cannot be told from another's this way
// and is not looked for.
func (mgr *Manager) killJailed(ctx context.Context, name string) (*forcedJails, []int, error) {
	if jailer.ValidateID(name) != nil {
		return nil, nil, nil // a name the jailer refuses: never jailed
	}
	ids, err := mgr.jailIDs()
	if err != nil {
		return nil, nil, err
	}
	leases, err := ids.Leases(ctx)
	ids.Close()
	if err != nil {
		return nil, nil, err
	}
	fj := &forcedJails{name: name}
	var killed []int
	var errs []error
	for uid, owner := range leases {
		if owner != name {
			continue
		}
		for _, f := range jailer.FindJailed(uid, name) {
			id := jailer.JailedIdentity(uid, f.RunID)
			p, err := proc.Attach(f.PID, f.Start, &id) // the pidfd pins it: checked again
			if err != nil {
				continue // gone meanwhile
			}
			if p.Signal(syscall.SIGKILL) == nil {
				killed = append(killed, f.PID)
			}
			if f.GuardPID > 0 {
				errs = append(errs, jailer.KillGuard(f.GuardPID, f.GuardStart))
			}
			select {
			case <-p.Done():
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			p.Release()
			fj.found = append(fj.found, f)
		}
	}
	return fj, killed, errors.Join(errs...)
}

// remove removes the jails found, whose processes have ended: the chroot, the cgroups named
// for the VM that its firecracker was in, and, once all is gone, the uid lease. Files lent to
// the jail (a persistent drive) cannot be given back without the record: they keep the jail's
// uid.
func (fj *forcedJails) remove(ctx context.Context, mgr *Manager) error {
	if fj == nil || len(fj.found) == 0 {
		return nil
	}
	var errs []error
	layout, lerr := jailer.DetectCgroups()
	for _, f := range fj.found {
		if base, err := safedir.OpenTrusted(f.Config.Base(), false); err == nil {
			errs = append(errs, jailer.RemoveJail(base, f.Config))
			base.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		for hier, p := range f.Cgroups {
			if lerr != nil {
				errs = append(errs, lerr)
				break
			}
			mnt := layout.V2
			if hier != "" {
				controller, _, _ := strings.Cut(hier, ",")
				mnt = layout.V1[controller]
			}
			// Only a directory the jailer makes for this jail, as reapJail removes: p names
			// the parent cgroup the jail was given.
			cfg := f.Config
			cfg.ParentCgroup = strings.TrimPrefix(filepath.Dir(p), "/")
			if d := filepath.Join(mnt, p); mnt != "" && layout.IsCgroupDir(cfg, d) {
				errs = append(errs, jailer.RemoveCgroups(ctx, d))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		// The uid stays leased while something of the jail may be left.
		return fmt.Errorf("remove the jail of vm %s: %w", fj.name, err)
	}
	ids, err := mgr.jailIDs()
	if err != nil {
		return err
	}
	defer ids.Close()
	return ids.Release(ctx, fj.name)
}
