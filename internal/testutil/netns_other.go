//go:build !linux

package testutil

import (
	"errors"
	"fmt"
	"os"
	"testing"
)

// Netns is a network namespace that a test created and entered with EnterNetns.
type Netns struct {
	// File is the namespace, open until the test ends.
	File *os.File
	// Path opens the namespace while the test runs.
	Path string
}

// EnterNetns needs Linux network namespaces; elsewhere it skips the test.
func EnterNetns(t testing.TB, hostPrefix string) *Netns {
	t.Helper()
	t.Skip("network namespaces need Linux")
	return nil
}

// LinksWithPrefix needs Linux; elsewhere it skips the test.
func LinksWithPrefix(t testing.TB, prefix string) []string {
	t.Helper()
	t.Skip("listing network devices by namespace needs Linux")
	return nil
}

// AddUplink needs Linux network namespaces; elsewhere it fails with errors.ErrUnsupported.
func AddUplink() error {
	return fmt.Errorf("add a stand-in uplink: %w", errors.ErrUnsupported)
}

// NeedUplink needs Linux; elsewhere it skips the test.
func NeedUplink(t testing.TB) {
	t.Helper()
	t.Skip("a stand-in uplink needs Linux network namespaces")
}
