package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestRunAgent boots a VM with --agent: the agent (here a static busybox standing in for it)
// is in the staged copy of the root filesystem and not in the original.
func TestRunAgent(t *testing.T) {
	testutil.CheckLeaks(t)
	const static = "/bin/busybox"
	if _, err := os.Stat(static); err != nil {
		t.Skipf("needs a static executable to install (apt-get install busybox-static): %v", err)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/sbin/mkfs.ext4"
	}
	files := t.TempDir()
	kernel, rootfs := filepath.Join(files, "vmlinux"), filepath.Join(files, "rootfs.ext4")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootfs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(rootfs, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", rootfs).CombinedOutput(); err != nil {
		t.Skipf("needs mkfs.ext4: %v %s", err, out)
	}
	before, _ := os.ReadFile(rootfs)

	env := fakeEnv(t)
	env[envAgentBin] = "/bin/sh"
	env.run(t, "run", "-d", "--rm", "--name", "ag", "--kernel", kernel, "--rootfs", rootfs, "--agent", "--boot-args", bootArgs(testguest.ModeHalt)).fails(t, ExitError, "dynamically linked")
	env[envAgentBin] = static
	env.run(t, "run", "-d", "--rm", "--name", "ag", "--kernel", kernel, "--rootfs", rootfs, "--agent", "--persistent-rootfs").fails(t, ExitUsage, "--persistent-rootfs")
	env.run(t, "run", "-d", "--rm", "--name", "ag", "--kernel", kernel, "--rootfs", rootfs, "--agent", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	defer env.run(t, "kill", "ag")
	staged := filepath.Join(env[envRuntimeDir], "vms", "ag", "drives", "rootfs.img")
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		debugfs = "/sbin/debugfs"
	}
	got, err := exec.Command(debugfs, "-R", "cat /usr/local/bin/smartvm-agent", staged).Output()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(static)
	if !bytes.Equal(got, want) {
		t.Errorf("the staged root filesystem has %d bytes at /usr/local/bin/smartvm-agent, want %d", len(got), len(want))
	}
	if after, _ := os.ReadFile(rootfs); !bytes.Equal(before, after) {
		t.Error("the original root filesystem was changed")
	}
}
