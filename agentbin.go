package smartvm

import (
	"debug/elf"
	"errors"
	"fmt"
	"runtime"
	"strings"
)

// FindAgentBinary returns the first of candidates (paths; empty ones are skipped) that can be
// installed in guests as smartvm-agent: a static ELF executable for the guest's architecture,
// such as cmd/smartvm-agent, or the smartvm command itself, built with CGO_ENABLED=0 (it acts
// as the agent when run under that name). The error says why each candidate was refused.
func FindAgentBinary(candidates ...string) (string, error) {
	var why []string
	for _, c := range candidates {
		if c == "" {
			continue
		}
		err := checkAgentBinary(c)
		if err == nil {
			return c, nil
		}
		why = append(why, err.Error())
	}
	if len(why) == 0 {
		return "", errors.New("no smartvm-agent binary to install")
	}
	return "", fmt.Errorf("no static smartvm-agent binary to install: %s; build one with CGO_ENABLED=0 go build ./cmd/smartvm-agent (or install smartvm itself with CGO_ENABLED=0)", strings.Join(why, "; "))
}

// checkAgentBinary checks that path is a static ELF executable that guests can run.
func checkAgentBinary(path string) error {
	if path == "" {
		return errors.New("the spec asks for the guest agent, and the manager has none: pass WithAgentBinary")
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("agent binary %s: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("agent binary %s is not an executable", path)
	}
	if want, ok := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]; ok && f.Machine != want {
		return fmt.Errorf("agent binary %s is for %s, not this host's guests (%s)", path, f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("agent binary %s is dynamically linked (built with cgo) and would need the guest's C library", path)
		}
	}
	return nil
}
