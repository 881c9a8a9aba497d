package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Environment variables the CLI reads (flags win over them, they win over defaults).
const (
	envFirecrackerBin      = "SMARTVM_FIRECRACKER_BIN"
	envRuntimeDir          = "SMARTVM_RUNTIME_DIR"
	envStagingDir          = "SMARTVM_STAGING_DIR"
	envBaseImageDir        = "SMARTVM_BASE_IMAGE_DIR"
	envCIBucketURL         = "SMARTVM_CI_BUCKET_URL"
	envBaseImagePreset     = "SMARTVM_BASE_IMAGE_PRESET"
	envBaseImageManifest   = "SMARTVM_BASE_IMAGE_MANIFEST_URL"
	envBaseImageManifestP  = "SMARTVM_BASE_IMAGE_MANIFEST_PATH"
	envFirecrackerReleases = "SMARTVM_FIRECRACKER_RELEASE_URL"
	envAgentBin            = "SMARTVM_AGENT_BIN"
	envImageKernel         = "SMARTVM_IMAGE_KERNEL"
	envRootfsHeadroom      = "SMARTVM_ROOTFS_HEADROOM_MIB"
	envImageMaxSize        = "SMARTVM_IMAGE_MAX_SIZE"
	envImageMaxFiles       = "SMARTVM_IMAGE_MAX_FILES"
)

// errNoFirecracker: no firecracker binary in any of the places the CLI looks.
var errNoFirecracker = errors.New("no firecracker binary found in --firecracker-bin, $" + envFirecrackerBin +
	", ~/.smartvm/bin/firecracker or PATH; run 'smartvm setup' to install one")

// firecrackerBin is a firecracker executable and where the CLI found it.
type firecrackerBin struct {
	Path string `json:"path"`
	// From is "--firecracker-bin", "$SMARTVM_FIRECRACKER_BIN", "~/.smartvm/bin" or "PATH".
	From string `json:"from"`
}

// homeDir is $HOME; the CLI keeps its installed binaries under it.
func (a *app) homeDir() (string, error) {
	if h := a.getenv("HOME"); h != "" {
		return h, nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory: %w", err)
	}
	return h, nil
}

// binDir is ~/.smartvm/bin, where setup installs Firecracker.
func (a *app) binDir() (string, error) {
	h, err := a.homeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(h, ".smartvm", "bin"), nil
}

// findFirecracker looks for firecracker in this order: --firecracker-bin,
// $SMARTVM_FIRECRACKER_BIN, ~/.smartvm/bin/firecracker, then PATH. A binary named by the flag or
// the variable must exist; the search does not fall through past it. It returns
// errNoFirecracker when nothing is found.
func (a *app) findFirecracker() (firecrackerBin, error) {
	for _, c := range []struct{ from, path string }{
		{"--firecracker-bin", a.fcBinFlag},
		{"$" + envFirecrackerBin, a.getenv(envFirecrackerBin)},
	} {
		if c.path == "" {
			continue
		}
		p, err := filepath.Abs(c.path)
		if err == nil {
			err = checkExecutable(p)
		}
		if err != nil {
			return firecrackerBin{}, fmt.Errorf("firecracker binary from %s: %w", c.from, err)
		}
		return firecrackerBin{Path: p, From: c.from}, nil
	}
	if dir, err := a.binDir(); err == nil {
		p := filepath.Join(dir, "firecracker")
		if checkExecutable(p) == nil {
			return firecrackerBin{Path: p, From: "~/.smartvm/bin"}, nil
		}
	}
	if p, err := a.lookPath("firecracker"); err == nil {
		return firecrackerBin{Path: p, From: "PATH"}, nil
	}
	return firecrackerBin{}, errNoFirecracker
}

// checkExecutable reports why path is not an executable regular file.
func checkExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable (chmod +x it)", path)
	}
	return nil
}
