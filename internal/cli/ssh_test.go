package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smartvm/smartvm"
)

func TestSSHArgs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(key, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := []string{"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	vm := smartvm.MachineInfo{Name: "web", GuestIP: "172.16.0.2", SSHKey: key}
	for _, tc := range []struct {
		name     string
		info     smartvm.MachineInfo
		identity string
		user     string
		command  []string
		want     []string
		err      string
	}{
		{"login", vm, "", "root", nil, slices.Concat([]string{"-i", key}, opts, []string{"root@172.16.0.2"}), ""},
		{"command", vm, "", "root", []string{"uname", "-a"}, slices.Concat([]string{"-i", key}, opts, []string{"root@172.16.0.2", "--", "uname", "-a"}), ""},
		{"identity and user", smartvm.MachineInfo{Name: "x", GuestIP: "10.0.0.2"}, key, "ubuntu", nil, slices.Concat([]string{"-i", key}, opts, []string{"ubuntu@10.0.0.2"}), ""},
		{"no network", smartvm.MachineInfo{Name: "x", SSHKey: key}, "", "root", nil, nil, "vm x has no network: start it with --net"},
		{"no key", smartvm.MachineInfo{Name: "x", GuestIP: "10.0.0.2"}, "", "root", nil, nil, "not started from a base image, so smartvm has no key for it: pass -i"},
		{"key gone", smartvm.MachineInfo{Name: "x", GuestIP: "10.0.0.2", SSHKey: filepath.Join(dir, "gone")}, "", "root", nil, nil, "pass -i with another key"},
		{"identity missing", vm, filepath.Join(dir, "nope"), "root", nil, nil, "-i: stat "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sshArgs(tc.info, tc.identity, tc.user, tc.command)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("sshArgs = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A user name ssh would read as an option (or as a host) is refused before ssh runs.
func TestSSHRefusesOptionLikeUser(t *testing.T) {
	env := newEnv(t)
	for _, user := range []string{"-oProxyCommand=touch /tmp/pwned", "root@10.0.0.1", "a b", "a\nb"} {
		env.run(t, "ssh", "--user="+user, "vm1").fails(t, ExitUsage, "must not start with '-'")
	}
}
