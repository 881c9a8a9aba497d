package smartvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/safedir"
)

// Staged drives live in the VM's runtime directory (drives/) unless WithStagingDir names a
// staging root: then in <staging root>/smartvm-<h>-<name>/, where <h> identifies the runtime
// root, so that two runtime roots can share a staging root. The path is the same for every
// incarnation of the VM, as Restore needs, and is recorded in state.json (staging_dir), so
// that an attaching process finds it and reaping removes it.

// stagingPrefix starts the name of every staging directory smartvm makes.
const stagingPrefix = "smartvm-"

// paths returns the file paths of VM name, with its staging directory.
func (mgr *Manager) paths(name string) rundir.Paths {
	p := mgr.root.Paths(name)
	if mgr.stagingDir != "" {
		p.Drives = filepath.Join(mgr.stagingDir, mgr.stagingName(name))
	}
	return p
}

// stagingName is the name of VM name's staging directory in a staging root: it carries this
// runtime root's hash, so that only this root's VM of that name uses (and removes) it.
func (mgr *Manager) stagingName(name string) string {
	sum := sha256.Sum256([]byte(mgr.root.Path()))
	return stagingPrefix + hex.EncodeToString(sum[:4]) + "-" + name
}

// statePaths are the file paths of the VM st describes: as the runtime root computes them,
// with the staging directory st records when it is one of this root's for that VM.
func (mgr *Manager) statePaths(st *rundir.State) rundir.Paths {
	p := st.Paths
	if mgr.isStagingDir(st.StagingDir, st.Name) {
		p.Drives = st.StagingDir
	}
	return p
}

// isStagingDir reports whether dir, recorded in a state.json (hostile input), is exactly the
// staging directory this manager makes for VM name: its staging root joined with the name
// stagingName gives. Without a staging root no recorded directory is one.
func (mgr *Manager) isStagingDir(dir, name string) bool {
	if mgr.stagingDir == "" || dir == "" {
		return false
	}
	want := mgr.stagingName(name)
	// The last element is checked on its own too: a name with "/" or ".." in it could make
	// the join lead elsewhere.
	return filepath.Base(dir) == want && dir == filepath.Join(mgr.stagingDir, want)
}

// notStagingDir explains why dir, recorded for VM name, is left alone.
func (mgr *Manager) notStagingDir(dir, name string) error {
	if mgr.stagingDir == "" {
		return fmt.Errorf("staging dir %s of vm %s: left alone: this manager has no staging root; use the one the vm was started with (WithStagingDir, --staging-dir, $SMARTVM_STAGING_DIR), or remove the directory by hand if it is the vm's", dir, name)
	}
	return fmt.Errorf("staging dir %s of vm %s: left alone: not the staging directory smartvm makes for it (%s); a state.json that names another path is not acted on: remove the directory by hand if it is the vm's", dir, name, filepath.Join(mgr.stagingDir, mgr.stagingName(name)))
}

// prepareStaging makes the VM's staging directory outside its runtime directory, when
// WithStagingDir asks for one, and pushes its removal.
func (s *starter) prepareStaging() error {
	p := s.mgr.paths(s.spec.Name)
	if p.Drives == s.dir.Paths.Drives {
		return nil
	}
	// The staging root must be as trustworthy as the runtime root (see docs/security.md).
	d, err := safedir.OpenTrusted(s.mgr.stagingDir, true)
	if err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	defer d.Close()
	// A directory left by an incarnation that died before it was reaped: the name is ours
	// (this root holds the VM's name), so what is in it is too.
	base := filepath.Base(p.Drives)
	if err := d.RemoveAll(base); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	if err := d.Mkdir(base, 0o700); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	s.dir.Paths.Drives = p.Drives
	s.push(func(context.Context) error { return s.mgr.removeStaging(p.Drives, s.spec.Name) })
	return nil
}

// removeStaging removes dir, the staging directory of VM name outside its runtime directory:
// only when it is exactly the one this manager makes for that VM (isStagingDir) and a
// directory (not a link), so that a state.json that names another path cannot make smartvm
// remove it.
func (mgr *Manager) removeStaging(dir, name string) error {
	if !mgr.isStagingDir(dir, name) {
		return mgr.notStagingDir(dir, name)
	}
	// Its parent must be a trustworthy directory, and the removal works relative to it: a
	// path recorded in state.json never leads anywhere else.
	d, err := safedir.OpenTrusted(filepath.Dir(dir), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("staging dir %s: %w; left alone", dir, err)
	}
	defer d.Close()
	if err := d.RemoveAll(filepath.Base(dir)); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	return nil
}

// stagedBytes is the space the files in dir take (allocated blocks, so a reflink or a hole
// costs nothing until written).
func stagedBytes(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
	}
	return n
}
