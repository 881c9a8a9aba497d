package smartvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/proc"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/stage"
	"github.com/smartvm/smartvm/netdev"
)

// Start boots the VM spec describes and returns once it runs (or has already ended: a guest
// may finish its work before Start returns, and Wait then reports how it ended).
//
// ctx bounds start-up only: resolving a base image, staging drives, spawning firecracker,
// waiting for its API, configuring and booting. The VM then runs until it is stopped, killed
// or closed, or ends by itself. In the default owned mode it also ends when this process
// dies; see Detached.
//
// Start validates spec (ValidateFor), reserves its name in the runtime root, builds the VM's
// network (MachineSpec.Network) in the calling thread's network namespace, stages ephemeral
// drives, and starts firecracker in its own process group, in the network namespace its TAPs
// are in, with stdin from /dev/null (or the serial.in FIFO, with SerialInput) and stdout (the
// serial console) and stderr to files in the VM's directory. In
// BootModeAPI it configures the VM with one request per item, in a fixed order (machine
// config, boot source, drives, network interfaces, vsock, balloon, entropy, MMDS), then
// sends InstanceStart; in BootModeConfigFile it writes config.json and passes
// --config-file. If a step fails, Start undoes every earlier step, in reverse, and returns a
// *StartError.
//
// Errors wrap ErrExists when the name is taken, ErrClosed after Manager.Close,
// errors.ErrUnsupported when the spec uses something the installed Firecracker lacks, and
// netdev's sentinels (netdev.ErrPermission without CAP_NET_ADMIN, netdev.ErrPoolExhausted,
// netdev.ErrUplinkNotFound...) when the network cannot be built.
func (mgr *Manager) Start(ctx context.Context, spec MachineSpec, opts ...StartOption) (*Machine, error) {
	spec = spec.WithDefaults()
	if spec.Name == "" {
		spec.Name = randomName()
	}
	if _, err := mgr.lookup(spec.Name); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.Name, err)
	}
	if err := spec.ValidateFor(mgr.root.Path()); err != nil {
		return nil, fmt.Errorf("start vm %s: invalid spec: %w", spec.Name, err)
	}
	return mgr.launch(ctx, spec, nil, opts)
}

// launch runs a start (or, with a restore plan, a restore) of spec, which has its defaults
// and name, and undoes it all if it fails.
func (mgr *Manager) launch(ctx context.Context, spec MachineSpec, restore *restorePlan, opts []StartOption) (*Machine, error) {
	if v := spec.Vsock; v != nil && v.Path != "" {
		// state.json records the absolute path, so that reaping (from another process, in
		// another directory) finds the socket.
		abs, err := filepath.Abs(v.Path)
		if err != nil {
			return nil, fmt.Errorf("start vm %s: vsock path: %w", spec.Name, err)
		}
		vs := *v
		vs.Path = abs
		spec.Vsock = &vs
	}
	s := &starter{
		mgr:   mgr,
		spec:  spec,
		prov:  provisionerFor(spec, restore),
		log:   mgr.log.With("vm", spec.Name),
		begin: time.Now(),
	}
	for _, opt := range opts {
		opt(&s.opts)
	}
	m, err := s.run(ctx)
	if err != nil {
		s.rollback(ctx)
	}
	if spec.Jailer != nil {
		mgr.refillWarm() // what this start took, or found dead
	}
	return m, err
}

func randomName() string {
	var b [4]byte
	rand.Read(b[:])
	return "vm-" + hex.EncodeToString(b[:])
}

// starter carries one Start through its steps.
type starter struct {
	mgr   *Manager
	spec  MachineSpec
	prov  provisioner // how the VM gets running: chosen up front, by launch
	opts  startOptions
	log   *slog.Logger
	begin time.Time

	// undo holds what each completed step must undo on failure, in order of the steps. On
	// success it becomes the Machine's cleanup, run when the VM ends.
	undo []func(context.Context) error

	bin      string
	binKey   binaryKey // bin's identity when it was found
	exe      string    // bin with symlinks resolved: what /proc/<pid>/exe will show
	version  fcapi.Version
	dir      *rundir.Dir
	image    *resolvedImage
	serial   *os.File   // read handle on serial.log
	stdin    *os.File   // firecracker's end of serial.in, with SerialInput
	held     []*os.File // drives used in place, locked, handed to firecracker to hold
	callerNS *os.File   // the network namespace Start was called in, with a network
	net      *netdev.Network
	proc     *proc.Process
	client   *fcapi.Client
	jail     *startJail // with a JailerSpec
	warm     *warmJail  // the warm jail this start took, if any (WarmJails)
	warming  bool       // this start makes a warm jail: it takes none
}

func (s *starter) push(fn func(context.Context) error) { s.undo = append(s.undo, fn) }

// rollback undoes the completed steps in reverse, with a ctx that survives the caller's.
func (s *starter) rollback(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(s.undo) - 1; i >= 0; i-- {
		errs = append(errs, s.undo[i](ctx))
	}
	if s.serial != nil {
		s.serial.Close()
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("undo failed start", "err", err)
	}
}

// fail builds the StartError for a failed step, with firecracker's log tail and, if it died,
// how it ended. It runs before the rollback removes the logs.
func (s *starter) fail(step string, err error) error {
	se := &StartError{Name: s.spec.Name, Step: step, Err: err}
	if s.proc != nil {
		// A request that failed because firecracker died usually sees the connection drop
		// just before the process is reaped: give the exit a moment to register.
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-s.proc.Done():
			st := s.proc.Status()
			if !st.Success() {
				se.Exit = &ExitError{Code: st.Code, Signal: st.Signal}
			}
		case <-t.C:
		}
		t.Stop()
	}
	if s.dir != nil {
		se.LogTail = logTail(s.dir.Paths)
		if se.Exit != nil {
			se.Exit.LogTail = se.LogTail
		}
	}
	return se
}

// ranToCompletion reports whether firecracker has exited with code 0; asked once the boot was
// requested, it says that the guest booted and finished (a test guest that prints and reboots
// can do so before the API answers), which is a successful start of a VM that has already
// ended.
func (s *starter) ranToCompletion() bool {
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-s.proc.Done():
		return s.proc.Status().Success()
	case <-t.C:
		return false
	}
}

// snapshot is the snapshot the VM is loaded from; nil for a boot.
func (s *starter) snapshot() *Snapshot {
	if p := s.prov.restoring(); p != nil {
		return p.snap
	}
	return nil
}

func (s *starter) run(ctx context.Context) (*Machine, error) {
	var err error
	if err := s.findFirecracker(ctx); err != nil {
		return nil, s.fail("find firecracker", err)
	}
	s.log.Debug("firecracker", "binary", s.bin, "version", s.version.String())
	if err := s.checkVersion(); err != nil {
		return nil, s.fail("check the firecracker version", err)
	}
	if err := s.prov.check(s); err != nil {
		return nil, err
	}

	if s.dir, err = s.mgr.root.Create(ctx, s.spec.Name); err != nil {
		return nil, s.fail("reserve the name", err)
	}
	dir := s.dir
	s.push(dir.Remove)
	if err := s.prepareStaging(); err != nil {
		return nil, s.fail("prepare the staging dir", err)
	}

	if s.spec.Network != nil {
		// Before the base image, which may take a download: a host that cannot make the
		// network (no CAP_NET_ADMIN) fails at once.
		if err := s.setupNetwork(ctx); err != nil {
			return nil, s.fail("set up the network", err)
		}
	}
	if err := s.prov.inputs(ctx, s); err != nil {
		return nil, err
	}
	if s.spec.Jailer != nil {
		if err := s.prepareJail(ctx); err != nil {
			return nil, s.fail("prepare the jail", err)
		}
	}
	defer func() {
		for _, f := range s.held {
			f.Close() // firecracker has its own copies, and with them the locks
		}
	}()
	var stdout, stderr *os.File
	if s.warm != nil { // a warm jail's firecracker has its files already
		stdout, stderr = s.warm.stdout, s.warm.stderr
	} else if stdout, stderr, err = s.createFiles(); err != nil {
		return nil, s.fail("create files", err)
	}
	// stdout (serial.log, opened for writing) goes to capSerial once the VM runs.
	defer func() {
		if stdout != nil {
			stdout.Close()
		}
	}()
	defer stderr.Close()
	if s.stdin != nil {
		defer s.stdin.Close() // firecracker has its own copy
	}

	drives, err := s.prov.stage(ctx, s)
	if err != nil {
		return nil, s.fail("stage drives", err)
	}
	cfg := s.vmConfig(drives)
	applyNICRateLimits(s.spec, &cfg)
	if s.jail != nil {
		if err := s.jailConfig(ctx, &cfg); err != nil {
			return nil, s.fail("put files into the jail", err)
		}
	}
	if s.warm != nil {
		if err := s.holdDriveLocks(s.held); err != nil {
			return nil, s.fail("hold drive locks", err)
		}
	} else if err := s.spawn(cfg, stdout, stderr); err != nil {
		return nil, err
	}

	if err := dir.WriteState(s.state()); err != nil {
		return nil, s.fail("write state", err)
	}
	s.client = fcapi.New(dir.APISocket, fcapi.WithVersion(s.version), fcapi.WithLogger(s.log),
		fcapi.WithMaxPayload(s.spec.apiPayloadLimit()))
	client := s.client
	s.push(func(context.Context) error { return client.Close() })

	if err := s.prov.run(ctx, s, cfg); err != nil {
		return nil, err
	}
	m := s.machine()
	if _, err := s.mgr.register(m); err != nil {
		return nil, s.fail("register", err)
	}
	go m.supervise()
	go m.capSerial(stdout)
	stdout = nil
	m.log.Info("vm started", "pid", s.proc.PID(), "took", time.Since(s.begin), "mode", s.mode(), "boot_mode", s.spec.BootMode, "warm_jail", s.warm != nil)
	return m, nil
}

// spawn starts firecracker (through the jailer, with a jail) with its arguments for cfg and
// the VM's files.
func (s *starter) spawn(cfg fcapi.VMConfig, stdout, stderr *os.File) error {
	args, err := s.args(cfg)
	if err != nil {
		return s.fail("write config", err)
	}
	pcfg := proc.Config{Path: s.bin, Args: args, Stdin: s.stdin, Stdout: stdout, Stderr: stderr, ExtraFiles: s.held,
		Detached: s.opts.detached, Around: s.spawnAround(), MountNS: s.prov.mountNS()}
	if s.jail != nil {
		s.proc, err = s.launchJailed(pcfg)
	} else {
		s.proc, err = proc.Start(pcfg)
	}
	if err != nil {
		return s.fail("spawn firecracker", err)
	}
	s.pushKill()
	s.log.Debug("spawned firecracker", "pid", s.proc.PID(), "args", args)
	return nil
}

// pushKill makes the undo of the spawn: SIGKILL for firecracker, and a wait for its end.
func (s *starter) pushKill() {
	p := s.proc
	s.push(func(ctx context.Context) error {
		if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return err
		}
		select {
		case <-p.Done():
			return nil
		case <-ctx.Done():
			// A process stuck in the kernel (uninterruptible I/O) outlives SIGKILL for a
			// while; the rest of the cleanup must not wait for it forever.
			return fmt.Errorf("firecracker pid %d did not end after SIGKILL: %w", p.PID(), ctx.Err())
		}
	})
}

// findFirecracker resolves the manager's firecracker: its path, identity and version
// (Manager.Firecracker), and the executable its links lead to.
func (s *starter) findFirecracker(ctx context.Context) error {
	key, v, err := s.mgr.firecracker(ctx)
	if err != nil {
		return err
	}
	s.binKey, s.bin, s.version = key, key.Path, v
	s.exe, _ = filepath.EvalSymlinks(s.bin) // empty (unchecked) if it cannot be resolved
	return nil
}

// requestFreeReadyBefore is the first release whose API thread survives a request pending
// while the VMM stops. Before it (seen with v1.7.0), the API thread waits forever for the
// VMM's answer and the process for the API thread: a guest that ends right after a
// config-file boot, while the readiness request is queued, leaves Firecracker hung.
var requestFreeReadyBefore = fcapi.Version{Major: 1, Minor: 14}

// waitBooted waits, without sending a request, until firecracker runs a vCPU thread, so its
// config-file boot is done, or exits.
func waitBooted(ctx context.Context, p *proc.Process) error {
	pause := time.Millisecond
	for {
		names, _ := proc.Threads(p.PID())
		for _, n := range names {
			if strings.HasPrefix(n, "fc_vcpu") {
				return nil
			}
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for the boot: %w", ctx.Err())
		case <-p.Done():
			t.Stop()
			return fmt.Errorf("wait for the boot: %w", fcapi.ErrProcessExited)
		case <-t.C:
		}
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// createFiles creates the VM's log files, and opens its stdout (the serial console) and
// stderr for the child plus a read handle on the console for Console; with SerialInput, it
// creates the serial.in FIFO and opens it for reading and writing as the child's stdin.
// Firecracker before v1.14 needs its log and metrics files to exist.
func (s *starter) createFiles() (stdout, stderr *os.File, err error) {
	p := s.dir.Paths
	empty := []string{p.Log}
	if s.spec.Metrics {
		empty = append(empty, p.Metrics)
	}
	for _, path := range empty {
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			return nil, nil, err
		}
	}
	if stdout, err = os.OpenFile(p.Serial, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600); err != nil {
		return nil, nil, err
	}
	if stderr, err = os.OpenFile(p.Stderr, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600); err != nil {
		stdout.Close()
		return nil, nil, err
	}
	if s.serial, err = os.Open(p.Serial); err != nil {
		stdout.Close()
		stderr.Close()
		return nil, nil, err
	}
	if s.spec.SerialInput {
		err := rundir.MakeFIFO(p.SerialIn)
		if err == nil {
			s.stdin, err = rundir.OpenFIFO(p.SerialIn)
		}
		if err != nil {
			stdout.Close()
			stderr.Close()
			return nil, nil, err // the rollback closes s.serial
		}
	}
	return stdout, stderr, nil
}

// stageDrives returns the drives as Firecracker gets them: ephemeral writable drives point at
// private copies staged in the VM's directory; the others are used in place.
func (s *starter) stageDrives(ctx context.Context) ([]fcapi.Drive, error) {
	specs := s.spec.Drives
	if s.image != nil {
		specs = append([]DriveSpec{s.image.root}, specs...)
	}
	drives := make([]fcapi.Drive, 0, len(specs))
	for _, d := range specs {
		path := d.Path
		if d.Ephemeral() {
			dst := s.dir.Drive(d.ID)
			t0 := time.Now()
			res, err := stage.Copy(ctx, d.Path, dst)
			if err != nil {
				return nil, fmt.Errorf("drive %s: %w", d.ID, err)
			}
			s.log.Debug("staged drive", "id", d.ID, "src", d.Path, "method", res.Method, "bytes", res.BytesWritten, "took", time.Since(t0))
			path = dst
			if d.Root && s.spec.Agent {
				if err := baseimage.InstallAgent(ctx, dst, s.mgr.agent); err != nil {
					return nil, fmt.Errorf("drive %s: %w", d.ID, err)
				}
				s.log.Debug("installed the guest agent", "drive", d.ID, "agent", s.mgr.agent)
			}
		}
		drives = append(drives, driveConfig(d, path))
	}
	return drives, nil
}

// driveConfig is the drive d as Firecracker gets it, backed by path.
func driveConfig(d DriveSpec, path string) fcapi.Drive {
	return fcapi.Drive{
		DriveID:      d.ID,
		PathOnHost:   path,
		IsRootDevice: d.Root,
		IsReadOnly:   d.ReadOnly,
		PartUUID:     d.PartUUID,
		CacheType:    d.CacheType,
		IOEngine:     d.IOEngine,
		RateLimiter:  d.RateLimiter,
	}
}

// checkVersion refuses, before anything is created or spawned, a spec that needs a newer
// Firecracker than the binary's for a flag (EnablePCI, ExtraArgs); a boot's check (boot.check)
// does the same for its configuration's fields and values (fcapi's version gate). The error
// is an *fcapi.UnsupportedError naming the first release that has what is missing.
func (s *starter) checkVersion() error {
	var flags []string
	if s.spec.EnablePCI {
		flags = append(flags, "--enable-pci")
	}
	return fcapi.CheckFlags(s.version, append(flags, s.spec.ExtraArgs...))
}

// restageDrives stages a snapshot's copies of the ephemeral drives where the VM had them. A
// copy is reached through a handle on the snapshot's directory (safedir: no symlink on the
// way, nothing another user could rename; a snapshot is input, and one could point its drive
// at any file of the host), must be a regular file of this user (a file another user planted
// is not one smartvm wrote), and is staged from the file it opened.
func (s *starter) restageDrives(ctx context.Context, snap *Snapshot) error {
	sd, err := safedir.OpenTrusted(snap.Dir, false)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.Dir, err)
	}
	defer sd.Close()
	for id, d := range snap.Drives {
		f, err := sd.OpenRegular(d.File)
		if err != nil {
			return fmt.Errorf("drive %s of the snapshot: %w: take the snapshot again", id, err)
		}
		_, err = stage.Copy(ctx, fdPath(f), s.dir.Drive(id))
		f.Close()
		if err != nil {
			return fmt.Errorf("drive %s: %w", id, err)
		}
	}
	return nil
}

// checkInputs opens the kernel, the initrd and every drive without blocking and refuses
// anything but a regular file (or a block device, for a drive): a FIFO or a socket there would
// hang Firecracker. It refuses one file given as two drives when either may be written, and a
// persistent drive whose size changed since snap was taken, for a VM loaded from snap (nil for
// a boot). It locks the drives used in place, a writable one exclusively and a read-only one
// shared, so that no two VMs write one persistent drive and none reads one another VM writes.
// The locked files are handed to firecracker, so the locks last exactly as long as it runs.
func (s *starter) checkInputs(snap *Snapshot) error {
	kernel, initrd := s.spec.Kernel, s.spec.Initrd
	drives := s.spec.Drives
	if s.image != nil {
		kernel, initrd = s.image.kernel, s.image.initrd
		drives = append([]DriveSpec{s.image.root}, drives...)
	}
	for _, in := range []struct{ what, path string }{{"kernel", kernel}, {"initrd", initrd}} {
		if in.path == "" || snap != nil { // a snapshot loads without them
			continue
		}
		f, err := safedir.OpenInput(in.path, false, false)
		if err != nil {
			return fmt.Errorf("%s: %w", in.what, err)
		}
		f.Close()
	}
	type fileID struct{ dev, ino uint64 }
	type input struct {
		d    DriveSpec
		f    *os.File
		info safedir.Info
	}
	var inputs []input
	defer func() {
		for _, in := range inputs {
			if !slices.Contains(s.held, in.f) {
				in.f.Close()
			}
		}
	}()
	seen := map[fileID]DriveSpec{}
	for _, d := range drives {
		if snap != nil && d.Ephemeral() {
			continue // staged from the snapshot's copy
		}
		f, err := safedir.OpenInput(d.Path, writable(d), true)
		if err != nil {
			return fmt.Errorf("drive %s: %w", d.ID, err)
		}
		info, err := safedir.Stat(f)
		inputs = append(inputs, input{d, f, info})
		if err != nil {
			return fmt.Errorf("drive %s: %w", d.ID, err)
		}
		id := fileID{info.Dev, info.Ino}
		if prev, ok := seen[id]; ok && (writable(prev) || writable(d)) {
			return fmt.Errorf("drives %s and %s are the same file (%s): a drive that is written cannot also be another drive; give it once", prev.ID, d.ID, d.Path)
		}
		seen[id] = d
	}
	var held []*os.File
	for _, in := range inputs {
		d, f, info := in.d, in.f, in.info
		if d.Ephemeral() {
			continue // copied: only checked
		}
		if snap != nil && !d.ReadOnly {
			if want, ok := snap.PersistentSizes[d.ID]; ok && want != info.Size && info.Mode.IsRegular() {
				return fmt.Errorf("persistent drive %s (%s) is %d bytes, but was %d when the snapshot was taken: the guest's memory no longer matches it; restore it to its size, or boot afresh", d.ID, d.Path, info.Size, want)
			}
		}
		lock, how := safedir.Flock, "read-write"
		if d.ReadOnly {
			lock, how = safedir.FlockShared, "read-only"
		}
		if ok, err := lock(f); err != nil || !ok {
			return fmt.Errorf("drive %s: %s is in use by another vm (or program) that holds a lock on it, so it cannot be used %s here: stop that vm, or use a copy: %w", d.ID, d.Path, how, errors.Join(err, ErrDriveInUse))
		}
		held = append(held, f)
	}
	s.held = held
	return nil
}

// writable reports whether a drive may be written where it is (a persistent read-write drive).
func writable(d DriveSpec) bool { return !d.Ephemeral() && !d.ReadOnly }

// vmConfig is the VM's whole configuration, in Firecracker's terms. Both boot modes use it:
// the API mode sends it piece by piece, the config-file mode writes it.
func (s *starter) vmConfig(drives []fcapi.Drive) fcapi.VMConfig {
	sp := s.spec
	boot := fcapi.BootSource{KernelImagePath: sp.Kernel, InitrdPath: sp.Initrd, BootArgs: sp.BootArgs}
	if s.image != nil {
		boot.KernelImagePath = s.image.kernel
		boot.InitrdPath = s.image.initrd
		if boot.BootArgs == "" {
			boot.BootArgs = s.image.bootArgs
		}
	}
	if s.net != nil && s.net.BootArgs != "" {
		boot.BootArgs = strings.TrimSpace(boot.BootArgs + " " + s.net.BootArgs)
	}
	if sp.AgentMain {
		boot.BootArgs = strings.TrimSpace(boot.BootArgs + " " + AgentMainBootArg)
	}
	if a := sp.mmdsBootArg(); a != "" {
		boot.BootArgs = strings.TrimSpace(boot.BootArgs + " " + a)
	}
	cfg := fcapi.VMConfig{
		BootSource:    &boot,
		MachineConfig: &fcapi.MachineConfig{VCPUCount: sp.VCPUs, MemSizeMiB: sp.MemoryMiB, SMT: sp.SMT, HugePages: sp.HugePages, CPUTemplate: sp.CPUTemplate, TrackDirtyPages: sp.TrackDirtyPages},
		Drives:        drives,
	}
	for _, n := range sp.Interfaces {
		cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, fcapi.NetworkInterface{
			IfaceID:       n.ID,
			HostDevName:   n.TAP,
			GuestMAC:      n.MAC,
			MTU:           n.MTU,
			RxRateLimiter: n.RxRateLimiter,
			TxRateLimiter: n.TxRateLimiter,
		})
	}
	if s.net != nil {
		cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, networkInterfaces(s.net)...)
	}
	if v := sp.Vsock; v != nil {
		cfg.Vsock = &fcapi.Vsock{GuestCID: int(v.CID), UDSPath: s.vsockPath()}
	}
	if b := sp.Balloon; b != nil {
		cfg.Balloon = &fcapi.Balloon{AmountMiB: b.AmountMiB, DeflateOnOOM: b.DeflateOnOOM, StatsPollingIntervalS: b.StatsPollingIntervalS}
	}
	if e := sp.Entropy; e != nil {
		cfg.Entropy = &fcapi.EntropyDevice{RateLimiter: e.RateLimiter}
	}
	if m := sp.MMDS; m != nil {
		cfg.MMDSConfig = &fcapi.MMDSConfig{Version: m.Version, NetworkInterfaces: m.Interfaces, IPv4Address: m.IPv4Address, IMDSCompat: m.IMDSCompat}
	}
	return cfg
}

// vsockPath is the vsock's host socket: as given (made absolute by launch), or vsock.sock in
// the VM's directory.
func (s *starter) vsockPath() string {
	if p := s.spec.Vsock.Path; p != "" || s.dir == nil {
		return p // no directory yet: checkVersion needs no path
	}
	return s.dir.Vsock
}

// logLevels maps the accepted spellings to the names every Firecracker release knows.
var logLevels = map[string]string{
	"error": "Error", "warning": "Warning", "warn": "Warning", "info": "Info",
	"debug": "Debug", "trace": "Trace", "off": "Off",
}

// args builds firecracker's command line, with the provisioner's arguments (a config-file
// boot writes config.json and metadata.json here). checkVersion and the provisioner's check
// have checked them against the binary.
func (s *starter) args(cfg fcapi.VMConfig) ([]string, error) {
	p := s.dir.Paths
	args := []string{
		"--api-sock", p.APISocket,
		"--id", s.spec.Name,
		"--log-path", p.Log,
		"--level", logLevels[strings.ToLower(string(s.spec.LogLevel))],
	}
	if s.spec.Metrics {
		args = append(args, "--metrics-path", p.Metrics)
	}
	if s.spec.Vsock != nil && s.spec.Vsock.Path != "" {
		// Firecracker creates this socket outside the VM's directory, and never removes it.
		vs := s.vsockPath()
		s.push(func(context.Context) error { return removeIfExists(vs) })
	}
	more, err := s.prov.args(s, cfg)
	if err != nil {
		return nil, err
	}
	args = append(args, more...)
	if s.spec.EnablePCI && !slices.Contains(s.spec.ExtraArgs, "--enable-pci") {
		args = append(args, "--enable-pci")
	}
	return append(args, s.spec.ExtraArgs...), nil
}

// configFileArgs writes cfg to config.json, and the MMDS data to metadata.json, for a
// config-file boot, and returns the arguments that name them.
func (s *starter) configFileArgs(cfg fcapi.VMConfig) ([]string, error) {
	p := s.dir.Paths
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.Config, append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	args := []string{"--config-file", p.Config}
	if s.spec.MMDS != nil {
		data, err := s.mmdsData()
		if err != nil {
			return nil, err
		}
		if len(data) > 0 {
			if err := os.WriteFile(p.Metadata, data, 0o600); err != nil {
				return nil, err
			}
			args = append(args, "--metadata", p.Metadata)
		}
	}
	return args, nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// configure sends the configuration over the API in the conventional order (notes §14.3;
// the logger and metrics were given as flags), then boots.
func (s *starter) configure(ctx context.Context, cfg fcapi.VMConfig) error {
	c := s.client
	type step struct {
		name string
		do   func() error
	}
	steps := []step{
		{"PUT /machine-config", func() error { return c.PutMachineConfig(ctx, *cfg.MachineConfig) }},
		{"PUT /boot-source", func() error { return c.PutBootSource(ctx, *cfg.BootSource) }},
	}
	for _, d := range cfg.Drives {
		steps = append(steps, step{"PUT /drives/" + d.DriveID, func() error { return c.PutDrive(ctx, d) }})
	}
	for _, n := range cfg.NetworkInterfaces {
		steps = append(steps, step{"PUT /network-interfaces/" + n.IfaceID, func() error { return c.PutNetworkInterface(ctx, n) }})
	}
	if cfg.Vsock != nil {
		steps = append(steps, step{"PUT /vsock", func() error { return c.PutVsock(ctx, *cfg.Vsock) }})
	}
	if cfg.Balloon != nil {
		steps = append(steps, step{"PUT /balloon", func() error { return c.PutBalloon(ctx, *cfg.Balloon) }})
	}
	if cfg.Entropy != nil {
		steps = append(steps, step{"PUT /entropy", func() error { return c.PutEntropy(ctx, *cfg.Entropy) }})
	}
	if cfg.MMDSConfig != nil {
		steps = append(steps, step{"PUT /mmds/config", func() error { return c.PutMMDSConfig(ctx, *cfg.MMDSConfig) }})
		data, err := s.mmdsData()
		if err != nil {
			return err
		}
		if len(data) > 0 {
			steps = append(steps, step{"PUT /mmds", func() error { return c.PutMMDS(ctx, data) }})
		}
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return s.fail(st.name, err)
		}
	}
	// The boot is requested: a guest that has run to completion already is no failure.
	if err := c.StartInstance(ctx); err != nil && !s.ranToCompletion() {
		return s.fail("InstanceStart", err)
	}
	return nil
}

// record is the VM's record (record.go) as far as the start has come.
func (s *starter) record() *vmRecord {
	r := &vmRecord{
		st: rundir.State{
			Name:               s.spec.Name,
			Paths:              s.dir.Paths,
			Mode:               s.mode(),
			OwnerPID:           os.Getpid(),
			Created:            s.begin.UTC(),
			FirecrackerBinary:  s.bin,
			Exe:                s.exe,
			FirecrackerVersion: s.version.String(),
			Jail:               s.jailRecord(),
			Keep:               s.opts.keep,
		},
		spec:    s.spec,
		network: s.net,
	}
	st := &r.st
	if s.dir.Paths.Drives != s.mgr.root.Paths(s.spec.Name).Drives && s.jail == nil { // a jail stages in its chroot
		st.StagingDir = s.dir.Paths.Drives
	}
	if s.proc != nil { // else not spawned yet: PID 0 says so
		st.PID, st.StartTime = s.proc.PID(), s.proc.StartTime()
	}
	if s.image != nil {
		st.BaseImage = &rundir.BaseImage{ID: s.image.id, Holder: s.image.holder, SSHKey: s.image.sshKey}
	}
	s.prov.record(r)
	return r
}

// state is the VM's record as state.json holds it.
func (s *starter) state() *rundir.State { return s.record().state() }

func (s *starter) mode() string {
	if s.opts.detached {
		return ModeDetached
	}
	return ModeOwned
}

// machine hands the started VM, and its record, to a Machine, whose cleanup is the undo
// stack.
func (s *starter) machine() *Machine {
	m := &Machine{
		mgr:      s.mgr,
		log:      s.log,
		name:     s.spec.Name,
		rec:      *s.record(),
		paths:    s.dir.Paths,
		dir:      s.dir,
		proc:     s.proc,
		client:   s.client,
		started:  true,
		serial:   s.serial,
		netns:    s.callerNS,
		state:    StateRunning,
		released: make(chan struct{}),
		done:     make(chan struct{}),
	}
	// The first step reserved the name: its undo (dir.Remove) runs last, or, for a VM that
	// is kept (KeepExited), the record of its end replaces it.
	m.removeDir, m.cleanups = s.undo[0], s.undo[1:]
	return m
}
