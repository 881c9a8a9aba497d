package baseimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// checkAgentInstalled checks the agent, its unit and the link enabling it in an ext4 image.
func checkAgentInstalled(t *testing.T, image, agentContent string) {
	t.Helper()
	if out, err := exec.Command(mustTool(t, "e2fsck"), "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	if got := debugfsCat(t, image, AgentPath); got != agentContent {
		t.Errorf("agent in the image: %q, want %q", got, agentContent)
	}
	if got := debugfsCat(t, image, AgentUnitPath); got != AgentUnit {
		t.Errorf("unit in the image: %q", got)
	}
	for path, want := range map[string]string{
		AgentPath:                                "regular 0755 uid 0 gid 0",
		AgentUnitPath:                            "regular 0644 uid 0 gid 0",
		"/usr/local":                             "directory 0755 uid 0 gid 0",
		agentWantsDir + "/smartvm-agent.service": "symlink 0777 uid 0 gid 0",
	} {
		if got := debugfsStat(t, image, path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	out, err := exec.Command(mustTool(t, "debugfs"), "-R", "stat "+agentWantsDir+"/smartvm-agent.service", image).Output()
	if err != nil || !strings.Contains(string(out), `Fast link dest: "`+AgentUnitPath+`"`) {
		t.Errorf("the unit is not enabled: %s, %v", out, err)
	}
}

func writeAgent(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "smartvm-agent")
	if err := os.WriteFile(p, []byte(content), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInstallAgent installs the agent into an ext4 image with debugfs, twice (the second
// replaces the first), into an image that has some of the directories already.
func TestInstallAgent(t *testing.T) {
	needConvertTools(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(image, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mustTool(t, "mkfs.ext4"), "-q", "-F", "-E", "root_owner=0:0", "-d", tree, image).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	ctx := context.Background()
	if err := InstallAgent(ctx, image, writeAgent(t, "first")); err != nil {
		t.Fatal(err)
	}
	if err := InstallAgent(ctx, image, writeAgent(t, "second agent")); err != nil {
		t.Fatal(err)
	}
	checkAgentInstalled(t, image, "second agent")

	if err := InstallAgent(ctx, image, filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "agent binary") {
		t.Errorf("InstallAgent of a missing binary: %v", err)
	}
	if err := InstallAgent(ctx, filepath.Join(dir, "tree"), writeAgent(t, "x")); err == nil {
		t.Error("InstallAgent into a directory, not an image, succeeded")
	}
}

// TestConvertInstallsAgent converts the test squashfs with an agent binary set: the image has
// it, with its unit enabled.
func TestConvertInstallsAgent(t *testing.T) {
	needConvertTools(t)
	sq := testSquashfs(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "rootfs.squashfs")
	if err := os.WriteFile(src, sq, 0o644); err != nil {
		t.Fatal(err)
	}
	m := testManager(t, nil, func(o *Options) { o.AgentBinary = writeAgent(t, "agent bytes") })
	key, err := newSSHKey()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "rootfs.ext4")
	if err := m.convertSquashfs(context.Background(), "rootfs.squashfs", src, dst, filepath.Join(dir, "work"), key.authorizedKey); err != nil {
		t.Fatal(err)
	}
	checkAgentInstalled(t, dst, "agent bytes")
}
