package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/memfile"
	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
)

// Kinds of snapshot memory.
const (
	// MemoryFull is a memory file with all of guest memory.
	MemoryFull = "full"
	// MemoryDiff is a sparse memory file with only the pages written since its base.
	MemoryDiff = "diff"
)

// SnapshotMemory identifies a snapshot's memory file.
type SnapshotMemory struct {
	// Type is MemoryFull or MemoryDiff.
	Type string `json:"type"`
	// Size and SHA256 identify the memory file's content (memfile.Identity): SHA256 is that
	// of its pages of data, each preceded by its offset (8 bytes, little endian); pages of
	// zeros are left out of a full file's, and count in a diff's, where a hole is not a zero.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Base is, for a diff, the snapshot it lays over.
	Base *SnapshotBase `json:"base,omitempty"`
}

// SnapshotBase is the base of a diff snapshot: its directory, and the identity its memory
// file had when the diff was taken.
type SnapshotBase struct {
	Dir    string `json:"dir"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// maxDiffChain bounds the diffs a restore lays over a full snapshot.
const maxDiffChain = 32

// mergedMemory is the memory file a restore of a diff merges in the VM's directory, and
// jailMergedMemory the one it merges in a jailed VM's chroot.
const (
	mergedMemory     = "memory.img"
	jailMergedMemory = "snapshot-memory.img"
)

// SnapshotDiff saves the VM into dir as Snapshot does, except that the memory file holds
// only the pages the guest wrote since base, the VM's previous snapshot (or the snapshot
// it was restored from): a sparse file, quick to write. The VM must track its dirty pages
// (MachineSpec.TrackDirtyPages). Restore merges the chain of diffs onto its full snapshot,
// so base, and its own bases, must stay, unchanged, where they are.
//
// Errors are those of Snapshot, and one wrapping errors.ErrUnsupported when the VM does
// not track dirty pages or base records no memory identity.
func (m *Machine) SnapshotDiff(ctx context.Context, dir string, base Snapshot) (Snapshot, error) {
	if !m.Spec().TrackDirtyPages {
		return Snapshot{}, fmt.Errorf("diff snapshot of vm %s: it does not track dirty pages: start or restore it with dirty-page tracking (MachineSpec.TrackDirtyPages, smartvm run --track-dirty-pages), then take a full snapshot first: %w",
			m.name, errors.ErrUnsupported)
	}
	if base.Memory == nil || base.Dir == "" {
		return Snapshot{}, fmt.Errorf("diff snapshot of vm %s: base %s records no memory identity (an older smartvm wrote it): take a full snapshot to base diffs on: %w",
			m.name, base.Dir, errors.ErrUnsupported)
	}
	if err := m.checkDiffBase(base); err != nil {
		return Snapshot{}, fmt.Errorf("diff snapshot of vm %s: %w", m.name, err)
	}
	return m.snapshot(ctx, dir, &base)
}

func snapshotType(base *Snapshot) fcapi.SnapshotType {
	if base != nil {
		return fcapi.SnapshotDiff
	}
	return fcapi.SnapshotFull
}

// memoryRecord identifies the memory file Firecracker just wrote into sd.
func memoryRecord(sd *safedir.Dir, base *Snapshot) (*SnapshotMemory, error) {
	f, err := sd.OpenRegular(snapshotMemory)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	id, err := memfile.Identify(f, base != nil)
	if err != nil {
		return nil, err
	}
	mem := &SnapshotMemory{Type: MemoryFull, Size: id.Size, SHA256: id.SHA256}
	if base != nil {
		mem.Type = MemoryDiff
		mem.Base = &SnapshotBase{Dir: base.Dir, Size: base.Memory.Size, SHA256: base.Memory.SHA256}
	}
	return mem, nil
}

// checkMemory checks that the memory file of the snapshot in dir, a diff or not, is still
// the one recorded.
func checkMemory(dir string, diff bool, size int64, sum string) (*os.File, error) {
	f, err := safedir.OpenInput(filepath.Join(dir, snapshotMemory), false, false)
	if err != nil {
		return nil, err
	}
	id, err := memfile.Identify(f, diff)
	if err == nil && (id.Size != size || id.SHA256 != sum) {
		err = fmt.Errorf("its memory file changed since it was recorded (%d bytes, sha256 %.12s…; recorded %d bytes, %.12s…)", id.Size, id.SHA256, size, sum)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// diffChain opens the memory files of a diff snapshot's chain, checked against the
// identities recorded: the full base first, then each diff, oldest first.
func diffChain(snap *Snapshot) (files []*os.File, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	top, err := checkMemory(snap.Dir, true, snap.Memory.Size, snap.Memory.SHA256)
	if err != nil {
		return nil, fmt.Errorf("diff snapshot %s: %w", snap.Dir, err)
	}
	files = append(files, top)
	cur := *snap
	for range maxDiffChain {
		b := cur.Memory.Base
		if b == nil {
			return files, fmt.Errorf("diff snapshot %s names no base: a diff cannot be restored without the snapshot it was taken over", cur.Dir)
		}
		base, err := OpenSnapshot(b.Dir)
		if err != nil {
			return files, fmt.Errorf("diff snapshot %s: its base %s: %w: the chain is broken; restore needs every snapshot of it where it was taken", cur.Dir, b.Dir, err)
		}
		if base.Memory == nil {
			return files, fmt.Errorf("diff snapshot %s: its base %s records no memory identity: the chain is broken", cur.Dir, b.Dir)
		}
		f, err := checkMemory(base.Dir, base.diff(), b.Size, b.SHA256)
		if err != nil {
			return files, fmt.Errorf("diff snapshot %s: its base %s: %w: the chain is broken; restore the base as it was, or take a new full snapshot", cur.Dir, b.Dir, err)
		}
		files = append([]*os.File{f}, files...)
		if !base.diff() {
			return files, nil
		}
		cur = base
	}
	return files, fmt.Errorf("diff snapshot %s: more than %d diffs over a full snapshot: take a full snapshot", snap.Dir, maxDiffChain)
}

// mergeDiffs returns the memory file to load: memPath itself for a full snapshot, and for a
// diff the chain merged onto its full base (the snapshots are left as they are), in the VM's
// directory, or in its jail, as firecracker sees it there (memoryInJail). snap is the
// snapshot the VM is loaded from.
func (s *starter) mergeDiffs(ctx context.Context, snap *Snapshot, memPath string) (string, error) {
	if !snap.diff() {
		return memPath, nil
	}
	files, err := diffChain(snap)
	if err != nil {
		return "", err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if s.memoryInJail() {
		return s.mergeIntoJail(files)
	}
	// Made through the VM directory's handle, as the jail's merge is through the jail's; a
	// failed start removes it with the directory.
	out, err := s.dir.CreateWritable(ctx, mergedMemory)
	if err != nil {
		return "", err
	}
	if err := mergeChain(out, files); err != nil {
		return "", err
	}
	return filepath.Join(s.dir.Paths.Dir, mergedMemory), nil
}

// mergeChain merges a diff chain's memory files (the full base first, diffChain's order) into
// out, a new empty file, and closes it.
func mergeChain(out *os.File, files []*os.File) error {
	err := memfile.MergeInto(out, files[0], files[1:])
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("merge the diff snapshots: %w", err)
	}
	return nil
}

// diff reports whether snap's memory is a diff (MemoryDiff).
func (snap *Snapshot) diff() bool { return snap.Memory != nil && snap.Memory.Type == MemoryDiff }

// check refuses a memory record that is not one Snapshot writes.
func (m *SnapshotMemory) check() error {
	if m == nil {
		return nil
	}
	switch {
	case m.Type != MemoryFull && m.Type != MemoryDiff:
		return fmt.Errorf("memory type %q: want %s or %s", m.Type, MemoryFull, MemoryDiff)
	case m.Size <= 0 || !lowerHex(m.SHA256, 64):
		return fmt.Errorf("memory identity %d bytes, sha256 %q: want a size and 64 hex digits", m.Size, m.SHA256)
	case m.Type == MemoryFull && m.Base != nil:
		return errors.New("full memory with a base")
	case m.Type == MemoryDiff && m.Base == nil:
		return errors.New("a diff without its base: restore needs the snapshot it was taken over")
	case m.Base != nil && (!filepath.IsAbs(m.Base.Dir) || m.Base.Size != m.Size || !lowerHex(m.Base.SHA256, 64)):
		return fmt.Errorf("diff base %q (%d bytes, sha256 %q): want an absolute directory, the diff's size and 64 hex digits", m.Base.Dir, m.Base.Size, m.Base.SHA256)
	}
	return nil
}

// lastSnapshotNote, in a VM's directory, names the VM's last snapshot (or the one it was
// restored from): the only base a diff of the VM can have, as taking a snapshot starts the
// dirty-page log afresh. An empty note means none is known.
const lastSnapshotNote = "last-snapshot.json"

type lastSnapshot struct {
	Dir    string `json:"dir,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
}

// noteSnapshot records snap as the VM's last snapshot; nil clears the record, which a
// snapshot does before it starts so that a failure leaves no stale base behind.
func noteSnapshot(ctx context.Context, d *rundir.Dir, snap *Snapshot) error {
	var n lastSnapshot
	if snap != nil && snap.Memory != nil {
		n = lastSnapshot{Dir: snap.Dir, SHA256: snap.Memory.SHA256}
	}
	b, _ := json.Marshal(n)
	return d.WriteNote(ctx, lastSnapshotNote, b)
}

// checkDiffBase refuses a base other than the VM's last snapshot.
func (m *Machine) checkDiffBase(base Snapshot) error {
	b, err := m.dir.ReadNote(lastSnapshotNote, 4096)
	var n lastSnapshot
	if err == nil {
		err = json.Unmarshal(b, &n)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read the vm's last snapshot: %w", err)
	}
	switch {
	case n.SHA256 == "":
		return fmt.Errorf("vm %s has no snapshot known to base a diff on (none since it started, or the last one failed): take a full snapshot first", m.name)
	case n.SHA256 != base.Memory.SHA256:
		return fmt.Errorf("base %s is not vm %s's last snapshot, %s: a diff holds only the pages written since the last snapshot, so give that one as its base", base.Dir, m.name, n.Dir)
	}
	return nil
}
