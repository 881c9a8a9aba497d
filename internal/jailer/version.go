package jailer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/smartvm/smartvm/fcapi"
)

// ErrVersionMismatch reports a jailer of another release than the firecracker it would run.
var ErrVersionMismatch = errors.New("jailer and firecracker versions differ")

// Version runs `bin --version` and parses what it prints ("Jailer v1.7.0"). It takes at most
// 10 seconds (less if ctx says so).
func Version(ctx context.Context, bin string) (fcapi.Version, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fcapi.Version{}, fmt.Errorf("run %s --version: %w: %s", bin, err, strings.TrimSpace(errb.String()))
	}
	return ParseVersion(out.String())
}

// ParseVersion reads the first line of `jailer --version`, as in "Jailer v1.7.0".
func ParseVersion(s string) (fcapi.Version, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Jailer")
	if !ok {
		return fcapi.Version{}, fmt.Errorf("jailer --version printed %q, not \"Jailer vX.Y.Z\": is it Firecracker's jailer?", line)
	}
	v, err := fcapi.ParseVersion(strings.TrimSpace(rest))
	if err != nil {
		return fcapi.Version{}, fmt.Errorf("jailer --version: %w", err)
	}
	return v, nil
}

// CheckVersion refuses a jailer whose release differs from firecracker's, with an error
// wrapping ErrVersionMismatch.
func CheckVersion(jailerBin string, jailer fcapi.Version, firecrackerBin string, firecracker fcapi.Version) error {
	if jailer != firecracker {
		return fmt.Errorf("%w: jailer %s is v%s but firecracker %s is v%s: install the jailer of firecracker's release (smartvm setup does), or run without the jailer", ErrVersionMismatch, jailerBin, jailer, firecrackerBin, firecracker)
	}
	return nil
}
