//go:build !linux

package cli

import (
	"errors"
	"os/exec"
)

// envTestUplink: see net_linux_test.go. Network namespaces are Linux's.
const envTestUplink = "SMARTVM_TEST_UPLINK"

func inTestNetns(*exec.Cmd) {}

func addTestUplink() error { return errors.ErrUnsupported }

func smartvmNoNetAdmin([]string) int { return 1 }

func netProbeMain([]string) int { return 1 }
