package cli

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// asUser runs this test binary as smartvm, as user u, with env.
func asUser(t *testing.T, u testutil.User, bin string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := u.Command(bin, args...)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// installShared copies the test binary, readable by every user, as smartvm and firecracker
// (copies, not links: the supervisor re-executes os.Executable under its own name).
func installShared(t *testing.T) (smartvm, firecracker string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "smartvm-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, name := range []string{"smartvm", "firecracker"} {
		dst, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		src.Seek(0, io.SeekStart)
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		dst.Close()
	}
	return filepath.Join(dir, "smartvm"), filepath.Join(dir, "firecracker")
}

// Two users work with no configuration: each gets a runtime root of its own, and neither
// sees or touches the other's VMs.
func TestTwoUsersDoNotShare(t *testing.T) {
	testutil.CheckLeaks(t)
	u := testutil.OtherUser(t)
	smartvm, fc := installShared(t)
	env := fakeEnv(t)
	theirRoot := "/dev/shm/.smartvm-" + strconv.Itoa(int(u.UID))
	t.Cleanup(func() { os.RemoveAll(theirRoot) })
	uenv := []string{envFirecrackerBin + "=" + fc, "TMPDIR=/tmp", "GORACE=" + os.Getenv("GORACE")}

	out, err := asUser(t, u, smartvm, uenv, "run", "-d", "--rm", "--name", "theirs", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD))
	if err != nil {
		t.Fatalf("run as %s: %v: %s", u.Name, err, out)
	}
	t.Cleanup(func() { asUser(t, u, smartvm, uenv, "kill", "theirs") })
	env.run(t, "run", "-d", "--rm", "--name", "mine", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	t.Cleanup(func() { env.run(t, "kill", "mine") }) // if the test stops early

	out, err = asUser(t, u, smartvm, uenv, "ps", "--json")
	var theirs []psEntry
	if err != nil || json.Unmarshal([]byte(out), &theirs) != nil || len(theirs) != 1 || theirs[0].Name != "theirs" {
		t.Fatalf("their ps: %v %s", err, out)
	}
	if !strings.HasPrefix(theirs[0].RuntimeDir, theirRoot+"/runtime/") {
		t.Errorf("their vm lives in %s, want their own root %s", theirs[0].RuntimeDir, theirRoot)
	}
	if mine := env.ps(t); len(mine) != 1 || mine[0].Name != "mine" {
		t.Fatalf("my ps: %+v", mine)
	}
	// Naming the other's root gets nowhere, in either direction.
	if out, err := asUser(t, u, smartvm, uenv, "--runtime-dir", env[envRuntimeDir], "stop", "mine"); err == nil {
		t.Errorf("they stopped my vm: %s", out)
	}
	env.run(t, "--runtime-dir", theirRoot+"/runtime", "ps").fails(t, ExitError, "not by you")
	if out, err := asUser(t, u, smartvm, uenv, "stop", "theirs"); err != nil {
		t.Errorf("stop theirs: %v: %s", err, out)
	}
	env.run(t, "stop", "mine").ok(t)
}
