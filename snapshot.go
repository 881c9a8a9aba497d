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

	"github.com/smartvm/smartvm/fcapi"
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

// snapshotFormat is the manifest.json format this package writes and reads.
const snapshotFormat = 1

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
	f, err := safedir.OpenInput(filepath.Join(abs, snapshotManifest), false, false)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(abs, snapshotMemory)); serr == nil {
			return Snapshot{}, fmt.Errorf("open snapshot %s: it has no %s: the snapshot was interrupted before it finished; remove the directory and take it again: %w", abs, snapshotManifest, ErrNotFound)
		}
		return Snapshot{}, fmt.Errorf("open snapshot %s: no %s: %w", abs, snapshotManifest, ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("open snapshot %s: %w", abs, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
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
	if s.Version != snapshotFormat {
		return Snapshot{}, fmt.Errorf("open snapshot %s: manifest version %d, this smartvm reads %d: %w", abs, s.Version, snapshotFormat, errors.ErrUnsupported)
	}
	if !validName(s.Name) || strings.HasPrefix(s.Name, "-") {
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
	if s.BaseImage != "" && (len(s.BaseImage) != 16 || strings.Trim(s.BaseImage, "0123456789abcdef") != "") {
		return Snapshot{}, fmt.Errorf("open snapshot %s: base image %q is not a bundle ID (16 hex digits)", abs, s.BaseImage)
	}
	s.Dir = abs
	return s, nil
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
	if root := m.mgr.root.Path(); abs == root || strings.HasPrefix(abs, root+string(filepath.Separator)) {
		return Snapshot{}, fmt.Errorf("snapshot vm %s: %s is inside the runtime root %s, which smartvm cleans up: choose a directory outside it", m.name, abs, root)
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
	if err := noteSnapshot(m.dir, nil); err != nil {
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
	snap = Snapshot{
		Dir:                abs,
		Version:            snapshotFormat,
		Name:               m.name,
		Spec:               m.spec,
		FirecrackerVersion: m.version.String(),
		Created:            time.Now().UTC(),
		Network:            m.network,
		BaseImage:          m.image,
	}
	for _, d := range m.spec.Drives {
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
	for _, id := range stagedDrives(m.spec) {
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
	if err := noteSnapshot(m.dir, &snap); err != nil {
		m.log.Warn("record the last snapshot: diffs are refused until the next full snapshot", "err", err)
	}
	m.log.Info("vm snapshot taken", "dir", abs, "took", time.Since(t0))
	return snap, nil
}

// Restore starts a VM from a snapshot in a fresh Firecracker, under the snapshot's name, and
// resumes it. The snapshot's ephemeral drives are staged again at the paths they had, so the
// VM must be restored in a runtime root at the same path, and no other VM may have its name.
// The snapshot's memory file is mapped by the restored VM: keep the snapshot directory until
// the VM ends. MMDS data, which Firecracker does not keep in snapshots, is put back from the
// spec. A VM with a managed network gets new NICs with the TAP names and guest addresses the
// snapshot holds (the guest keeps its addresses in its memory): with NetworkSpec.Namespace
// always, in the caller's namespace only while the snapshot's /30s are free.
//
// Errors are those of Start; a snapshot written by a Firecracker of another minor release, or
// whose drives were staged in another runtime root, gives one wrapping
// errors.ErrUnsupported.
func (mgr *Manager) Restore(ctx context.Context, snap Snapshot, opts ...StartOption) (*Machine, error) {
	spec := snap.Spec.WithDefaults()
	spec.Name = snap.Name
	spec.BootMode = BootModeAPI // a snapshot loads through the API
	if _, err := mgr.lookup(spec.Name); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.Name, err)
	}
	paths := mgr.paths(spec.Name)
	for id, d := range snap.Drives {
		if d.HostPath != paths.Drive(id) && !jailStaged(spec, id, d.HostPath) {
			return nil, fmt.Errorf("restore vm %s: drive %s was staged at %s, and this runtime root stages it at %s: restore in the runtime root the snapshot was taken in: %w",
				spec.Name, id, d.HostPath, paths.Drive(id), errors.ErrUnsupported)
		}
	}
	return mgr.launch(ctx, spec, &snap, opts)
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

// load restores the snapshot into the fresh Firecracker and resumes it, then puts back the
// MMDS data.
func (s *starter) load(ctx context.Context) error {
	statePath, memPath := filepath.Join(s.snap.Dir, snapshotState), filepath.Join(s.snap.Dir, snapshotMemory)
	var err error
	if s.jail != nil {
		if statePath, memPath, err = s.jailSnapshotFiles(ctx, statePath, memPath); err != nil {
			return s.fail("put the snapshot into the jail", err)
		}
	}
	if memPath, err = s.mergeDiffs(ctx, memPath); err != nil {
		return s.fail("merge the diff snapshots", err)
	}
	backend, served, err := s.memoryBackend(ctx, memPath)
	if err != nil {
		return s.fail("serve the memory", err)
	}
	err = s.client.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath:    statePath,
		MemBackend:      backend,
		TrackDirtyPages: s.spec.TrackDirtyPages,
		ResumeVM:        true,
	})
	if serr := served(err); serr != nil {
		return s.fail("serve the memory", serr)
	}
	if err != nil {
		return s.fail("PUT /snapshot/load", err)
	}
	if err := noteSnapshot(s.dir, s.snap); err != nil {
		return s.fail("record the snapshot", err)
	}
	if s.spec.MMDS != nil {
		data, err := s.mmdsData()
		if err != nil {
			return s.fail("PUT /mmds", err)
		}
		if len(data) > 0 {
			if err := s.client.PutMMDS(ctx, data); err != nil {
				return s.fail("PUT /mmds", err)
			}
		}
	}
	return nil
}
