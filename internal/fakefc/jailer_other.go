//go:build !linux

package fakefc

import (
	"fmt"
	"os"
)

// JailerMain fails: the jailer is Linux-only.
func JailerMain([]string) int {
	fmt.Fprintln(os.Stderr, "fake jailer: Linux only")
	return exitUsage
}

func enterJail() error { return nil }
