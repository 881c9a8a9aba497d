package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// User is a local user account that a test created to play another user on the host.
type User struct {
	Name     string
	UID, GID uint32
}

// OtherUser creates an unprivileged local user for the test (useradd, no home, no login
// shell) and deletes it, with every process it left, when the test ends. It skips the test
// unless it runs as root with useradd available.
func OtherUser(t testing.TB) User {
	t.Helper()
	RequiresRoot(t)
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Skip("needs useradd (package passwd) to create a second local user")
	}
	var b [4]byte
	rand.Read(b[:])
	name := "smvt" + hex.EncodeToString(b[:])
	var out []byte
	var err error
	// useradd fails while another useradd holds /etc/passwd's lock; try again for a while.
	for range 50 {
		out, err = exec.Command("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "lock") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		exec.Command("pkill", "-KILL", "-u", name).Run()
		for range 50 {
			out, err := exec.Command("userdel", name).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "lock") && !strings.Contains(string(out), "currently used") {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("userdel %s failed", name)
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return User{Name: name, UID: uint32(uid), GID: uint32(gid)}
}

// Command returns a command that runs as u (no supplementary groups).
func (u User) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, NoSetGroups: false}}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/"}
	return cmd
}

// Sh runs a shell script as u and fails the test if it fails.
func (u User) Sh(t testing.TB, script string) string {
	t.Helper()
	out, err := u.Command("/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("as %s: sh -c %q: %v: %s", u.Name, script, err, out)
	}
	return string(out)
}

// SharedDir makes a directory that every user can write, sticky and owned by root, as /tmp
// is, and removes it when the test ends.
func SharedDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "smartvm-shared-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
