package smartvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/smartvm/smartvm/internal/rundir"
)

// Staged drives live in the VM's runtime directory (drives/) unless WithStagingDir names a
// staging root: then in <staging root>/smartvm-<h>-<name>/, where <h> identifies the runtime
// root, so that two runtime roots can share a staging root. The path is the same for every
// incarnation of the VM, as Restore needs, and is recorded in state.json (paths.drives), so
// that reaping removes it.

// stagingPrefix starts the name of every staging directory smartvm makes.
const stagingPrefix = "smartvm-"

// paths returns the file paths of VM name, with its staging directory.
func (mgr *Manager) paths(name string) rundir.Paths {
	p := mgr.root.Paths(name)
	if mgr.stagingDir != "" {
		sum := sha256.Sum256([]byte(mgr.root.Path()))
		p.Drives = filepath.Join(mgr.stagingDir, stagingPrefix+hex.EncodeToString(sum[:4])+"-"+name)
	}
	return p
}

// prepareStaging makes the VM's staging directory outside its runtime directory, when
// WithStagingDir asks for one, and pushes its removal.
func (s *starter) prepareStaging() error {
	p := s.mgr.paths(s.spec.Name)
	if p.Drives == s.dir.Paths.Drives {
		return nil
	}
	if err := os.MkdirAll(s.mgr.stagingDir, 0o700); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	// A directory left by an incarnation that died before it was reaped: the name is ours
	// (this root holds the VM's name), so what is in it is too.
	if err := removeStaging(p.Drives, s.spec.Name); err != nil {
		return err
	}
	if err := os.Mkdir(p.Drives, 0o700); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	s.dir.Paths.Drives = p.Drives
	s.push(func(context.Context) error { return removeStaging(p.Drives, s.spec.Name) })
	return nil
}

// removeStaging removes the staging directory dir of VM name when it lies outside the runtime
// directory: only a directory (not a link) whose name is smartvm's for that VM, so that a
// state.json that names another path cannot make smartvm remove it.
func removeStaging(dir, name string) error {
	h, ok := strings.CutSuffix(strings.TrimPrefix(filepath.Base(dir), stagingPrefix), "-"+name)
	if _, err := hex.DecodeString(h); !ok || err != nil || len(h) != 8 || !strings.HasPrefix(filepath.Base(dir), stagingPrefix) {
		return fmt.Errorf("staging dir %s: not a staging directory of vm %s; left alone", dir, name)
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("staging dir %s: not a directory; left alone", dir)
	}
	if err := os.RemoveAll(dir); err != nil {
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
