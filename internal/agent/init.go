package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// DefaultInitConfig is where the agent, as PID 1, reads its init config unless the kernel
// command line names another file with smartvm.init=PATH.
const DefaultInitConfig = "/etc/smartvm/init.json"

// InitConfig is what the agent runs as PID 1. The field names follow the OCI image config, so
// an image's config maps onto it directly. A missing file is an empty config: the agent sets the
// system up and serves, and runs no entrypoint.
type InitConfig struct {
	// Entrypoint and Cmd are joined into the command line, as with docker run.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env holds KEY=VALUE entries added to the default environment.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the entrypoint's directory; "" is the user's home, else /.
	WorkingDir string `json:"working_dir,omitempty"`
	// User is a name, uid, or uid:gid (names allowed); "" is root.
	User string `json:"user,omitempty"`
	// Hostname is set before anything runs; "" keeps the kernel's (from ip= or the default).
	Hostname string `json:"hostname,omitempty"`
}

// Args returns the entrypoint's command line.
func (c *InitConfig) Args() []string {
	return append(append([]string{}, c.Entrypoint...), c.Cmd...)
}

// loadInitConfig reads the init config at path; "" means smartvm.init= on the kernel command
// line, else DefaultInitConfig, which may be missing.
func loadInitConfig(path string) (*InitConfig, error) {
	explicit := path != ""
	if !explicit {
		path = DefaultInitConfig
		if p := kernelArg(kernelCmdline(), "smartvm.init"); p != "" {
			path, explicit = p, true
		}
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &InitConfig{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read init config: %w", err)
	}
	var c InitConfig
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("init config %s: %w", path, err)
	}
	return &c, nil
}

// kernelCmdline returns the kernel command line, "" when it cannot be read.
func kernelCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return strings.TrimSpace(string(b))
}

// kernelArg returns the value of the last key=value argument in cmdline.
func kernelArg(cmdline, key string) string {
	v := ""
	for _, f := range strings.Fields(cmdline) {
		if k, val, ok := strings.Cut(f, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// mainWaitArg reports whether cmdline has agentwire.MainWaitArg (the last smartvm.main= wins).
func mainWaitArg(cmdline string) bool {
	key, value, _ := strings.Cut(agentwire.MainWaitArg, "=")
	return kernelArg(cmdline, key) == value
}
