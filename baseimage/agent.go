package baseimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
)

// Where the guest agent goes in a root file system.
const (
	// AgentPath is where smartvm-agent is installed in a guest.
	AgentPath = "/usr/local/bin/smartvm-agent"
	// AgentUnitPath is its systemd unit, enabled through multi-user.target.wants.
	AgentUnitPath = "/etc/systemd/system/smartvm-agent.service"
	agentWantsDir = "/etc/systemd/system/multi-user.target.wants"
)

// AgentUnit is the systemd unit that starts the agent in a guest. The agent listens on vsock
// only.
const AgentUnit = `[Unit]
Description=smartvm guest agent (exec and file copies over vsock)
DefaultDependencies=no
After=local-fs.target

[Service]
ExecStart=` + AgentPath + `
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`

// InstallAgent installs the static smartvm-agent binary agent into the ext4 image file image,
// without mounting it (debugfs): at AgentPath (mode 0755, owned by root) with AgentUnit at
// AgentUnitPath, enabled. An agent already there is replaced. Only ever pass an image of one
// VM's own (a staged copy): the image is changed in place.
func InstallAgent(ctx context.Context, image, agent string) error {
	if fi, err := os.Stat(agent); err != nil {
		return fmt.Errorf("agent binary: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("agent binary %s is not a regular file", agent)
	}
	debugfs, err := lookTool(sbinDirs(), "debugfs")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "smartvm-agent-install-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	unit := filepath.Join(work, "unit")
	if err := os.WriteFile(unit, []byte(AgentUnit), 0o644); err != nil {
		return err
	}
	var b strings.Builder
	// debugfs's mkdir of an existing directory leaks an inode (e2fsprogs 1.47): create only
	// the missing ones.
	for _, d := range []string{"/usr", "/usr/local", "/usr/local/bin", "/etc", "/etc/systemd", "/etc/systemd/system", agentWantsDir} {
		exists, err := debugfsExists(ctx, debugfs, image, d)
		if err != nil {
			return err
		}
		if !exists {
			fmt.Fprintf(&b, "mkdir %s\nsif %s mode 040755\nsif %s uid 0\nsif %s gid 0\n", debugfsQuote(d), debugfsQuote(d), debugfsQuote(d), debugfsQuote(d))
		}
	}
	for _, f := range []struct{ src, dst, mode string }{{agent, AgentPath, "0100755"}, {unit, AgentUnitPath, "0100644"}} {
		q := debugfsQuote(f.dst)
		fmt.Fprintf(&b, "rm %s\nwrite %s %s\nsif %s mode %s\nsif %s uid 0\nsif %s gid 0\n", q, debugfsQuote(f.src), q, q, f.mode, q, q)
	}
	link := debugfsQuote(agentWantsDir + "/smartvm-agent.service")
	fmt.Fprintf(&b, "rm %s\nsymlink %s %s\n", link, link, debugfsQuote(AgentUnitPath))
	// Files that are not there yet are expected.
	notThere := func(line string) bool { return strings.HasPrefix(line, "rm: File not found by ext2_lookup") }
	if err := runDebugfsScript(ctx, debugfs, image, filepath.Join(work, "script"), b.String(), notThere); err != nil {
		return fmt.Errorf("install the agent into %s: %w", image, err)
	}
	return nil
}

// debugfsExists reports whether path exists in the ext4 image.
func debugfsExists(ctx context.Context, debugfs, image, path string) (bool, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, debugfs, "-R", "stat "+debugfsQuote(path), image)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return false, &toolError{tool: "debugfs", err: err, stderr: tail(stderr.Bytes(), 2048)}
	}
	switch {
	case strings.Contains(stderr.String(), "File not found by ext2_lookup"):
		return false, nil
	case strings.Contains(stdout.String(), "Inode:"):
		return true, nil
	}
	return false, fmt.Errorf("debugfs %s: %s", image, strings.TrimSpace(tail(stderr.Bytes(), 512)))
}

// maxAgentSize bounds the agent binary read into memory to be installed in a converted image:
// smartvm-agent is about 16 MiB, and smartvm itself, which can serve as the agent, about 26.
const maxAgentSize = 128 << 20

// readAgent reads the agent binary at path (Options.AgentBinary): a regular file
// (safedir.ReadInput: a FIFO is refused rather than waited on) of at most maxAgentSize bytes.
func readAgent(path string) ([]byte, error) {
	data, err := safedir.ReadInput(path, maxAgentSize)
	if err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}
	if len(data) > maxAgentSize {
		return nil, fmt.Errorf("agent binary %s is larger than %d MiB, the most smartvm installs: give the static smartvm-agent (CGO_ENABLED=0 go build ./cmd/smartvm-agent; about 16 MiB)",
			path, maxAgentSize>>20)
	}
	return data, nil
}

// installAgentTree copies agent into an unpacked tree with its unit, enabled. It never
// follows a symlink out of the tree. As root it sets owners to root; otherwise it returns the
// fixups for applyOwnership.
func installAgentTree(tree, agent string, asRoot bool) ([]fsEntry, error) {
	data, err := readAgent(agent)
	if err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(tree)
	if err != nil {
		return nil, fmt.Errorf("open unpacked tree: %w", err)
	}
	defer r.Close()
	var fixups []fsEntry
	for _, d := range []string{"usr", "usr/local", "usr/local/bin", "etc", "etc/systemd", "etc/systemd/system", strings.TrimPrefix(agentWantsDir, "/")} {
		fi, err := r.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := r.Mkdir(d, 0o755); err != nil {
				return nil, fmt.Errorf("create /%s: %w", d, err)
			}
			fixups = append(fixups, fsEntry{path: "/" + d, mode: sIFDIR | 0o755})
		case err != nil:
			return nil, fmt.Errorf("inspect /%s: %w", d, err)
		case !fi.IsDir():
			return nil, fmt.Errorf("the image's /%s is not a directory (%s)", d, fi.Mode().Type())
		}
	}
	for _, f := range []struct {
		path string
		data []byte
		mode fs.FileMode
	}{{AgentPath, data, 0o755}, {AgentUnitPath, []byte(AgentUnit), 0o644}} {
		rel := strings.TrimPrefix(f.path, "/")
		if err := r.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("replace %s: %w", f.path, err)
		}
		if err := r.WriteFile(rel, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
		if err := r.Chmod(rel, f.mode); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", f.path, err)
		}
		fixups = append(fixups, fsEntry{path: f.path, mode: sIFREG | uint32(f.mode)})
	}
	link := strings.TrimPrefix(agentWantsDir, "/") + "/smartvm-agent.service"
	if err := r.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("replace /%s: %w", link, err)
	}
	if err := r.Symlink(AgentUnitPath, link); err != nil {
		return nil, fmt.Errorf("enable the agent's unit: %w", err)
	}
	fixups = append(fixups, fsEntry{path: "/" + link, mode: sIFLNK | 0o777})
	return fixups, chownFixups(r, fixups, asRoot)
}
