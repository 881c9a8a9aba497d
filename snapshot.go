package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"crypto/sha256"
	"encoding/hex"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/stage"
	"github.com/smartvm/smartvm/netdev"
)

// Files of a snapshot directory.
const (
	snapshotManifest = "manifest.json"
	snapshotState    = "vm.state"
	snapshotMemory   = "vm.mem"
	snapshotDrives   = "drives"
)

// snapshotFormat is the manifest.json format this package writes. It reads it and format 1,
// which lacks StateSHA256 (and may lack Memory).
const snapshotFormat = 2

// Snapshot is a VM saved by Machine.Snapshot into a directory: Firecracker's VM state and
// guest memory files, copies of the VM's ephemeral drives, and manifest.json, which is this
// struct. Firecracker's snapshots do not hold disks: persistent and read-only drives are not
// copied and must still be at their paths, unchanged, when the snapshot is restored.
type Snapshot struct {
	// Dir is the snapshot's directory (not stored in manifest.json).
	Dir     string `json:"-"`
	Version int    `json:"version"`
	// Name is the VM's name; a restored VM gets it again.
	Name string `json:"name"`
	// Spec is the VM's description.
	Spec MachineSpec `json:"spec"`
	// FirecrackerVersion is the release that wrote the snapshot. Snapshots load only on the
	// same major and minor release.
	FirecrackerVersion string    `json:"firecracker_version"`
	Created            time.Time `json:"created"`
	// Drives are the ephemeral drives copied into the snapshot, by drive ID.
	Drives map[string]SnapshotDrive `json:"drives,omitempty"`
	// BaseImage is the ID of the base-image bundle the VM booted, if any: a restored VM holds
	// it in use again and gets its SSH key.
	BaseImage string `json:"base_image,omitempty"`
	// PersistentSizes are the sizes of the persistent (read-write, in place) drives when the
	// snapshot was taken, by drive ID: Restore refuses a drive whose size changed since.
	PersistentSizes map[string]int64 `json:"persistent_sizes,omitempty"`
	// Network is the VM's managed network when the snapshot was taken: Restore gives the
	// NICs the same TAP names and, with NetworkSpec.Namespace, the same guest addresses,
	// which the guest keeps in its memory.
	Network *netdev.Network `json:"network,omitempty"`
	// Memory identifies the memory file, full or a diff, and a diff's base (diff.go).
	// Manifests written before it have none: full memory of no known identity.
	Memory *SnapshotMemory `json:"memory,omitempty"`
	// StateSHA256 is the hex SHA-256 of vm.state: Restore refuses a state file that does not
	// match (modified, or another snapshot's). Empty (format 1): not checked.
	StateSHA256 string `json:"state_sha256,omitempty"`
}

// SnapshotDrive is an ephemeral drive saved with a snapshot.
type SnapshotDrive struct {
	// File is the copy, relative to the snapshot's directory.
	File string `json:"file"`
	// HostPath is where the VM had the drive staged; Firecracker reopens it there on restore.
	HostPath string `json:"host_path"`
}

// OpenSnapshot reads the snapshot in dir. It returns an error wrapping ErrNotFound when dir
// holds no snapshot.
func OpenSnapshot(dir string) (Snapshot, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %w", dir, err)
	}
	b, err := safedir.ReadInput(filepath.Join(abs, snapshotManifest), maxManifestSize)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(abs, snapshotMemory)); serr == nil {
			return Snapshot{}, fmt.Errorf("open snapshot %s: it has no %s: the snapshot was interrupted before it finished; remove the directory and take it again: %w", abs, snapshotManifest, ErrNotFound)
		}
		return Snapshot{}, fmt.Errorf("open snapshot %s: no %s: %w", abs, snapshotManifest, ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %w", abs, err)
	}
	if len(b) > maxManifestSize {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %s is larger than %d bytes: not one smartvm wrote", abs, snapshotManifest, maxManifestSize)
	}
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %s: %w", abs, snapshotManifest, err)
	}
	if s.Version != snapshotFormat && s.Version != 1 {
		return Snapshot{}, fmt.Errorf("open snapshot %s: manifest version %d, this smartvm reads 1 and %d: take the snapshot again with this smartvm, or use the one that wrote it: %w", abs, s.Version, snapshotFormat, errors.ErrUnsupported)
	}
	if s.StateSHA256 != "" && !lowerHex(s.StateSHA256, 64) {
		return Snapshot{}, fmt.Errorf("open snapshot %s: state_sha256 %q is not a hex SHA-256", abs, s.StateSHA256)
	}
	if !validVMName(s.Name) {
		return Snapshot{}, fmt.Errorf("open snapshot %s: invalid vm name %q", abs, s.Name)
	}
	// A snapshot is input: its drive copies must be the files smartvm writes, in the
	// snapshot's own drives directory, and nowhere else.
	for id, d := range s.Drives {
		if !validResourceID(id) || d.File != filepath.Join(snapshotDrives, id+".img") {
			return Snapshot{}, fmt.Errorf("open snapshot %s: drive %q has file %q: want %s/<id>.img for a drive id of letters, digits and _", abs, id, d.File, snapshotDrives)
		}
	}
	if err := s.Memory.check(); err != nil {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %w", abs, err)
	}
	if s.BaseImage != "" && !lowerHex(s.BaseImage, 16) {
		return Snapshot{}, fmt.Errorf("open snapshot %s: base image %q is not a bundle ID (16 hex digits)", abs, s.BaseImage)
	}
	s.Dir = abs
	return s, nil
}

// lowerHex reports whether s is n lowercase hex digits, as the sums and IDs smartvm writes are.
func lowerHex(s string, n int) bool {
	return len(s) == n && strings.Trim(s, "0123456789abcdef") == ""
}

// maxManifestSize bounds what is read of a snapshot's manifest.json.
const maxManifestSize = 16 << 20

// stagedDrives returns the IDs of the drives Start stages for spec (which has its defaults):
// a base image's root drive and the ephemeral drives.
func stagedDrives(spec MachineSpec) []string {
	var ids []string
	if spec.UsesBaseImage() {
		ids = append(ids, baseImageRootID)
	}
	for _, d := range spec.Drives {
		if d.Ephemeral() {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

// Snapshot saves the VM into dir, which must not exist or be empty: it pauses the VM, has
// Firecracker write its state and memory, copies the ephemeral drives (a reflink where the
// filesystem can), writes manifest.json, and resumes the VM if it was running, also when a
// step fails. ctx bounds the whole operation; writing the memory of a large VM takes a while.
// On failure the files it wrote are removed.
//
// It returns an error wrapping ErrNotRunning when the VM has ended, and ErrExists when dir
// holds files.
func (m *Machine) Snapshot(ctx context.Context, dir string) (snap Snapshot, err error) {
	return m.snapshot(ctx, dir, nil)
}

// snapshot saves the VM into dir: its full memory, or with base the pages written since
// base, which is the VM's previous snapshot.
func (m *Machine) snapshot(ctx context.Context, dir string, base *Snapshot) (snap Snapshot, err error) {
	if m.exited() {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, ErrNotRunning)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	if root := m.mgr.root.Path(); within(abs, root) {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %s is inside the runtime root %s, which smartvm cleans up: choose a directory outside it", m.name, abs, root)
	}
	if rec := m.record(); !rec.stagedIn(m.paths.Drives) && len(stagedDrives(rec.spec)) > 0 {
		// Attached by a manager that does not take the recorded directory for the VM's
		// staging directory (isStagingDir): its drives are not where this manager looks.
		return Snapshot{}, fmt.Errorf("snapshot vm %s: its drives are staged in %s, which is not this manager's staging directory for it: snapshot it with the staging directory it was started with (WithStagingDir, --staging-dir, $SMARTVM_STAGING_DIR)", m.name, rec.st.StagingDir)
	}
	// The snapshot holds the guest's memory: its directory must be private, and nobody else
	// may be able to swap the files Firecracker writes.
	sd, err := safedir.OpenTrusted(abs, true)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	defer sd.Close()
	if ents, err := sd.ReadDir("."); err != nil || len(ents) > 0 {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %s is not empty: %w", m.name, abs, errors.Join(err, ErrExists))
	}
	if err := sd.Chmod(".", 0o700); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	if err := sd.Mkdir(snapshotDrives, 0o700); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	defer func() {
		if err != nil {
			for _, name := range []string{snapshotManifest, snapshotState, snapshotMemory, snapshotDrives} {
				sd.RemoveAll(name)
			}
			os.Remove(abs) // only if this left it empty
		}
	}()
	// Created here, private, for Firecracker to write into (it keeps an existing file's mode).
	for _, name := range []string{snapshotState, snapshotMemory} {
		f, err := sd.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
		}
		f.Close()
	}

	state, err := m.State(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	if state == StateRunning {
		// The mark tells a later command, should this process be killed before it resumes
		// the VM, why the VM is paused.
		if err := m.dir.MarkSnapshot(ctx); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
		}
		// Resumed whatever happens from here, an interrupt (a cancelled ctx) included: a
		// pause request cut short by the ctx may still have paused the VM.
		defer func() {
			// Firecracker answers the resume only once it has finished the snapshot that an
			// interrupt cut short: writing a large guest's memory takes a while.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if rerr := m.Resume(rctx); rerr != nil {
				err = errors.Join(err, fmt.Errorf("snapshot vm %s: %w", m.name, rerr))
			}
		}()
		if err := m.Pause(ctx); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
		}
	}
	if err := noteSnapshot(ctx, m.dir, nil); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	t0 := time.Now()
	// A jailed firecracker writes in its chroot; finish brings the files here.
	statePath, memPath, finish, err := m.jailSnapshotTargets(filepath.Join(abs, snapshotState), filepath.Join(abs, snapshotMemory))
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	err = m.client.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{
		SnapshotPath: statePath,
		MemFilePath:  memPath,
		SnapshotType: snapshotType(base),
	})
	if ferr := finish(context.WithoutCancel(ctx)); err == nil && ferr != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, ferr)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, m.notRunning(err))
	}
	rec := m.record()
	snap = Snapshot{
		Dir:                abs,
		Version:            snapshotFormat,
		Name:               m.name,
		Spec:               rec.spec,
		FirecrackerVersion: rec.st.FirecrackerVersion,
		Created:            time.Now().UTC(),
		Network:            rec.network,
		BaseImage:          rec.baseImage(),
	}
	if snap.StateSHA256, err = fileSHA256(sd, snapshotState); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	for _, d := range snap.Spec.Drives {
		if writable(d) {
			fi, err := os.Stat(d.Path)
			if err != nil {
				return Snapshot{}, fmt.Errorf("snapshot vm %s: drive %s: %w", m.name, d.ID, err)
			}
			if snap.PersistentSizes == nil {
				snap.PersistentSizes = map[string]int64{}
			}
			snap.PersistentSizes[d.ID] = fi.Size()
		}
	}
	for _, name := range []string{snapshotState, snapshotMemory} {
		if err := sd.Chmod(name, 0o600); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
		}
	}
	if snap.Memory, err = memoryRecord(sd, base); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	for _, id := range stagedDrives(snap.Spec) {
		file := filepath.Join(snapshotDrives, id+".img")
		if _, err := stage.Copy(ctx, m.paths.Drive(id), filepath.Join(abs, file)); err != nil {
			return Snapshot{}, fmt.Errorf("snapshot vm %s: drive %s: %w", m.name, id, err)
		}
		if snap.Drives == nil {
			snap.Drives = map[string]SnapshotDrive{}
		}
		snap.Drives[id] = SnapshotDrive{File: file, HostPath: m.paths.Drive(id)}
	}
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	if err := sd.WriteFileAtomic(snapshotManifest, append(b, '\n'), 0o600); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %w", m.name, err)
	}
	if err := noteSnapshot(ctx, m.dir, &snap); err != nil {
		m.log.Warn("record the last snapshot: diffs are refused until the next full snapshot", "err", err)
	}
	m.log.Info("vm snapshot taken", "dir", abs, "took", time.Since(t0))
	return snap, nil
}

// RestoreSpec says how Restore starts a VM from a snapshot. Its zero value restores the
// snapshot's VM under its own name.
type RestoreSpec struct {
	// Name is the restored VM's name. Empty means the snapshot's. Under another name the VM
	// is a clone: it gets its own staged copies of the snapshot's ephemeral drives, its own
	// vsock socket, and with a network its own network namespace and TAP devices (the guest
	// keeps the snapshot's addresses, so clones must not share a namespace). Firecracker
	// reopens the files the snapshot names, those of the VM it was taken of; a clone's
	// firecracker runs in a mount namespace of its own in which those paths show the
	// clone's files (this needs root).
	Name string `json:"name,omitempty"`
	// MMDSData replaces the MMDS data of the snapshot's spec (Firecracker does not keep MMDS
	// data in snapshots). Nil keeps the spec's. It is put before the VM resumes. Under
	// another name, a JSON object (given, or the spec's) also gets the key "smartvm" with
	// {"name": <the VM's name>}, so that a clone can learn who it is.
	MMDSData json.RawMessage `json:"mmds_data,omitempty"`
	// VsockPath is the vsock socket of a VM restored under another name whose snapshot has
	// its vsock socket at a path of its own (VsockSpec.Path). Empty means vsock.sock in the
	// VM's directory. Such a socket can only be moved by Firecracker v1.16 or newer
	// (vsock_override); a socket in the VM's directory moves with any release.
	VsockPath string `json:"vsock_path,omitempty"`
}

// Restore starts a VM from a snapshot in a fresh Firecracker and resumes it. Under the
// snapshot's name (the zero RestoreSpec) it brings back the VM the snapshot was taken of:
// the ephemeral drives are staged again at the paths they had, so no other VM may have the
// name. Under another name (RestoreSpec.Name) it starts an independent clone, and the VM the
// snapshot was taken of may still run; call it concurrently, or use Clone, for many. The
// snapshot's memory file is mapped by the restored VM: keep the snapshot directory until the
// VM ends. MMDS data, which Firecracker does not keep in snapshots, is put back from the spec
// or RestoreSpec.MMDSData. A VM with a managed network gets new NICs with the guest addresses
// the snapshot holds (the guest keeps them in its memory): under its own name, with
// NetworkSpec.Namespace always and in the caller's namespace only while the snapshot's /30s
// are free; under another name always in a namespace of its own. The guest's wall clock
// continues from the snapshot's (MachineInfo.SnapshotTaken); a guest agent corrects it.
//
// Before anything starts, the snapshot's files are checked against its manifest: a memory
// file of another size or that another user can write, a state file that does not match, or
// a missing drive copy is refused.
// Errors are those of Start; a snapshot written by a Firecracker of another minor release, or
// whose drives were staged in another runtime root, gives one wrapping
// errors.ErrUnsupported.
func (mgr *Manager) Restore(ctx context.Context, snap Snapshot, rs RestoreSpec, opts ...StartOption) (*Machine, error) {
	return mgr.restore(ctx, snap, rs, false, opts)
}

// restore is Restore; filesChecked says the caller has already checked the snapshot's files
// (checkSnapshotFiles), as Clone does once for all its clones.
func (mgr *Manager) restore(ctx context.Context, snap Snapshot, rs RestoreSpec, filesChecked bool, opts []StartOption) (*Machine, error) {
	spec := snap.Spec.WithDefaults()
	spec.Name = snap.Name
	if rs.Name != "" {
		spec.Name = rs.Name
	}
	spec.BootMode = BootModeAPI // a snapshot loads through the API
	if _, err := mgr.lookup(spec.Name); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.Name, err)
	}
	plan, err := mgr.planRestore(&spec, &snap, rs)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.Name, err)
	}
	if !filesChecked {
		if err := checkSnapshotFiles(&snap, spec.MemoryMiB); err != nil {
			return nil, fmt.Errorf("restore vm %s: %w", spec.Name, err)
		}
	}
	return mgr.launch(ctx, spec, plan, opts)
}

// restorePlan is what a start from a snapshot needs beyond the spec.
type restorePlan struct {
	snap *Snapshot
	// aliases, for a VM restored under another name, show it its own files at the paths
	// the snapshot names.
	aliases []dirAlias
	// renamed: restored under another name than the snapshot's.
	renamed bool
	// moveVsock: the snapshot's vsock socket is outside its VM's directory, so no alias
	// moves it; only vsock_override can.
	moveVsock bool
}

// planRestore checks that snap can be restored as spec (named, with its defaults) describes
// and works out how; it adjusts spec for a VM restored under another name.
func (mgr *Manager) planRestore(spec *MachineSpec, snap *Snapshot, rs RestoreSpec) (*restorePlan, error) {
	if rs.Name != "" && !validVMName(rs.Name) {
		return nil, fmt.Errorf("invalid vm name %q: use 1 to 64 letters, digits and '-', not starting with '-'", rs.Name)
	}
	plan := &restorePlan{snap: snap, renamed: spec.Name != snap.Name}
	paths, src := mgr.paths(spec.Name), mgr.paths(snap.Name)
	asSnap := *spec // the snapshot's VM, whose jail staged its drives under its name
	asSnap.Name = snap.Name
	for id, d := range snap.Drives {
		if d.HostPath != src.Drive(id) && !jailStaged(asSnap, id, d.HostPath) {
			return nil, fmt.Errorf("drive %s was staged at %s, and this runtime root stages it at %s: %w",
				id, d.HostPath, src.Drive(id), ErrOtherRuntimeRoot)
		}
	}
	if rs.MMDSData != nil {
		if spec.MMDS == nil {
			return nil, fmt.Errorf("mmds data given, but the snapshot's vm has no MMDS (its configuration is part of the snapshot): take the snapshot of a vm started with mmds")
		}
		if !json.Valid(rs.MMDSData) {
			return nil, fmt.Errorf("mmds data is not valid JSON")
		}
		m := *spec.MMDS
		m.Data = rs.MMDSData
		spec.MMDS = &m
	}
	if !plan.renamed {
		return plan, nil
	}
	if spec.MMDS != nil {
		m := *spec.MMDS
		m.Data = withIdentity(m.Data, spec.Name)
		spec.MMDS = &m
	}
	if n := spec.Network; n != nil {
		ns := *n
		ns.Namespace = true // the guest keeps the snapshot's addresses
		spec.Network = &ns
	}
	if spec.Jailer != nil {
		// A jailed firecracker sees every path in its chroot, named after the device, not
		// the VM (drives/<id>.img, drive-<id>, the vsock socket): a clone's own jail shows it
		// its own files at the paths the snapshot names, with nothing to alias.
		return plan, nil
	}
	if root := mgr.root.Path(); within(snap.Dir, root) || (mgr.stagingDir != "" && within(snap.Dir, mgr.stagingDir)) {
		return nil, fmt.Errorf("snapshot %s is inside the runtime or staging root, which a clone's firecracker does not see: move it outside", snap.Dir)
	}
	plan.aliases = []dirAlias{{Parent: filepath.Dir(src.Dir), From: filepath.Base(src.Dir), To: filepath.Base(paths.Dir)}}
	if paths.Drives != filepath.Join(paths.Dir, rundir.DrivesDir) {
		plan.aliases = append(plan.aliases, dirAlias{Parent: filepath.Dir(src.Drives), From: filepath.Base(src.Drives), To: filepath.Base(paths.Drives)})
	}
	if v := spec.Vsock; v != nil && v.Path != "" {
		vs := *v
		vs.Path = rs.VsockPath
		spec.Vsock = &vs
		plan.moveVsock = true
	}
	return plan, nil
}

// within reports whether path is dir or inside it (both absolute and clean).
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}

// withIdentity adds {"smartvm": {"name": name}} to data when it is a JSON object (or empty),
// and returns data unchanged otherwise.
func withIdentity(data json.RawMessage, name string) json.RawMessage {
	obj := map[string]json.RawMessage{}
	if len(data) > 0 && json.Unmarshal(data, &obj) != nil {
		return data
	}
	id, _ := json.Marshal(map[string]string{"name": name})
	obj["smartvm"] = id
	b, err := json.Marshal(obj)
	if err != nil {
		return data
	}
	return b
}

// checkSnapshotFiles refuses, before anything is started, a snapshot whose files do not
// match its manifest: Firecracker maps a short memory file and faults the guest later, and
// loads whatever state file it finds.
func checkSnapshotFiles(snap *Snapshot, memoryMiB int) error {
	sd, err := safedir.OpenTrusted(snap.Dir, false)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.Dir, err)
	}
	defer sd.Close()
	mem, err := sd.Lstat(snapshotMemory)
	if err != nil {
		return fmt.Errorf("snapshot %s: memory file: %w: the snapshot is incomplete; take it again", snap.Dir, err)
	}
	// A manifest with no memory record (format 1) records no size: the file holds at least the
	// boot memory (hot-plugged memory makes it larger).
	want, short := int64(memoryMiB)<<20, false
	if snap.Memory != nil {
		want = snap.Memory.Size
		short = mem.Size != want
	} else {
		short = mem.Size < want
	}
	if !mem.Mode.IsRegular() || short {
		return fmt.Errorf("snapshot %s: memory file %s is %d bytes, want %d (the guest's memory): it was truncated or replaced; take the snapshot again",
			snap.Dir, snapshotMemory, mem.Size, want)
	}
	// Firecracker maps the file: whoever can write it can change the restored guest's memory.
	if mem.UID != sd.UID() || mem.Mode.Perm()&0o022 != 0 {
		return fmt.Errorf("snapshot %s: memory file %s is owned by uid %d with mode %v, so another user could change the guest's memory: make it yours and writable only by you (chown, chmod 600), or take the snapshot again",
			snap.Dir, snapshotMemory, mem.UID, mem.Mode.Perm())
	}
	if snap.StateSHA256 != "" {
		sum, err := fileSHA256(sd, snapshotState)
		if err != nil {
			return fmt.Errorf("snapshot %s: state file: %w: the snapshot is incomplete; take it again", snap.Dir, err)
		}
		if sum != snap.StateSHA256 {
			return fmt.Errorf("snapshot %s: state file %s does not match the manifest (sha256 %s, manifest %s): it was modified or comes from another snapshot; take the snapshot again",
				snap.Dir, snapshotState, sum, snap.StateSHA256)
		}
	}
	for id, d := range snap.Drives {
		if _, err := sd.Lstat(d.File); err != nil {
			return fmt.Errorf("snapshot %s: copy of drive %s: %w: the snapshot is incomplete; take it again", snap.Dir, id, err)
		}
	}
	return nil
}

// maxStateSize bounds the VM state file hashed: Firecracker's are kilobytes to a few MiB.
const maxStateSize = 256 << 20

// fileSHA256 returns the hex SHA-256 of the regular file name in d.
func fileSHA256(d *safedir.Dir, name string) (string, error) {
	f, err := d.OpenRegular(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxStateSize+1))
	if err != nil {
		return "", err
	}
	if n > maxStateSize {
		return "", fmt.Errorf("%s is larger than %d bytes: not a Firecracker VM state", name, maxStateSize)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkSnapshotVersion refuses a snapshot from another major or minor release than the
// binary's: Firecracker's snapshot format changes with nearly every minor release.
func checkSnapshotVersion(snap *Snapshot, bin fcapi.Version) error {
	v, err := fcapi.ParseVersion(snap.FirecrackerVersion)
	if err != nil {
		return fmt.Errorf("snapshot firecracker version %q: %w", snap.FirecrackerVersion, err)
	}
	if v.Major != bin.Major || v.Minor != bin.Minor {
		return fmt.Errorf("snapshot written by Firecracker %s cannot be loaded by %s: use a %d.%d release: %w",
			v, bin, v.Major, v.Minor, errors.ErrUnsupported)
	}
	return nil
}

// load restores the snapshot into the fresh Firecracker, puts the MMDS data and resumes it.
// A VM restored under another name gets its own TAPs (network_overrides) and vsock socket
// (vsock_override) where the release has them; its mount namespace covers the rest.
func (l snapshotLoad) load(ctx context.Context, s *starter) error {
	snap := l.plan.snap
	statePath, memPath := filepath.Join(snap.Dir, snapshotState), filepath.Join(snap.Dir, snapshotMemory)
	var err error
	if s.jail != nil {
		// A diff's memory is merged into the jail below, not lent; memory the page server
		// serves stays on the host.
		if statePath, memPath, err = s.jailSnapshotFiles(ctx, statePath, memPath, s.memoryInJail() && !snap.diff()); err != nil {
			return s.fail("put the snapshot into the jail", err)
		}
	}
	if memPath, err = s.mergeDiffs(ctx, snap, memPath); err != nil {
		return s.fail("merge the diff snapshots", err)
	}
	backend, served, err := s.memoryBackend(ctx, memPath)
	if err != nil {
		return s.fail("serve the memory", err)
	}
	var data json.RawMessage
	if s.spec.MMDS != nil {
		if data, err = s.mmdsData(); err != nil {
			return s.fail("PUT /mmds", err)
		}
	}
	p := fcapi.SnapshotLoadParams{
		SnapshotPath:    statePath,
		MemBackend:      backend,
		TrackDirtyPages: s.spec.TrackDirtyPages,
		// With MMDS data the VM resumes once it is in: the guest never runs without it.
		ResumeVM: len(data) == 0,
	}
	if s.overrideNICs() {
		for _, nic := range s.net.NICs {
			p.NetworkOverrides = append(p.NetworkOverrides, fcapi.NetworkOverride{IfaceID: nic.ID, HostDevName: nic.TAP})
		}
	}
	// A jailed clone's vsock socket is where the snapshot says, in the clone's own chroot.
	if l.plan.renamed && s.spec.Vsock != nil && s.jail == nil && s.version.AtLeast(fcapi.SnapshotLoadFieldSince("vsock_override")) {
		p.VsockOverride = &fcapi.VsockOverride{UDSPath: s.vsockPath()}
	}
	err = s.client.LoadSnapshot(ctx, p)
	if serr := served(err); serr != nil {
		return s.fail("serve the memory", serr)
	}
	if err != nil {
		return s.fail("PUT /snapshot/load", err)
	}
	if err := noteSnapshot(ctx, s.dir, snap); err != nil {
		return s.fail("record the snapshot", err)
	}
	if len(data) == 0 {
		return nil
	}
	if err := s.client.PutMMDS(ctx, data); err != nil {
		return s.fail("PUT /mmds", err)
	}
	if err := s.client.ResumeVM(ctx); err != nil {
		return s.fail("resume", err)
	}
	return nil
}

// overrideNICs reports whether a VM restored under another name gets TAPs of its own names,
// given to Firecracker with network_overrides; without them its TAPs keep the snapshot's
// names, in its own network namespace.
func (s *starter) overrideNICs() bool {
	p := s.prov.restoring()
	return p != nil && p.renamed && s.spec.Network != nil &&
		s.version.AtLeast(fcapi.SnapshotLoadFieldSince("network_overrides"))
}

// checkRestore refuses, before anything is created, a restore under another name that the
// release cannot do: moving a vsock socket that is not in the VM's directory.
func (l snapshotLoad) checkRestore(v fcapi.Version) error {
	since := fcapi.SnapshotLoadFieldSince("vsock_override")
	if l.plan.moveVsock && !v.AtLeast(since) {
		return &fcapi.UnsupportedError{Feature: "moving the vsock socket of a vm restored under another name (vsock_override; the snapshot's socket is outside its vm directory)",
			Since: since, Running: v}
	}
	return nil
}
