package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestUpdateRateLimits(t *testing.T) {
	testutil.CheckLeaks(t)
	env := fakeEnv(t)
	drive := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(drive, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	env.run(t, "run", "-d", "--rm", "--no-jailer", "--name", "limited", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCounter),
		"--drive", drive, "--drive-limit", "drive0=bw=1M,ops=10").ok(t)
	defer env.run(t, "stop", "limited")
	if out := env.run(t, "inspect", "limited").ok(t).stdout; !strings.Contains(out, `"rate_limiter"`) || !strings.Contains(out, `"size": 1048576`) {
		t.Errorf("inspect shows no rate limiter for --drive-limit:\n%s", out)
	}
	env.run(t, "run", "--image", "hello", "--drive", drive, "--drive-limit", "nope=bw=1M").fails(t, ExitUsage, "the vm has no drive nope (its drives: drive0")
	env.run(t, "run", "--image", "hello", "--nic-limit", "eth0=rx-bw=1M").fails(t, ExitUsage, "--nic-limit needs --net")
	env.run(t, "update", "limited", "--drive", "drive0=bw=10M,ops=100").ok(t)
	// The new limits are recorded: inspect (another process) shows them; a 0 removes one.
	if out := env.run(t, "inspect", "limited").ok(t).stdout; !strings.Contains(out, `"size": 10485760`) || !strings.Contains(out, `"size": 100,`) || strings.Contains(out, `"size": 1048576,`) {
		t.Errorf("inspect does not show the updated limits:\n%s", out)
	}
	env.run(t, "update", "limited", "--drive", "drive0=bw=0").ok(t)
	if out := env.run(t, "inspect", "limited").ok(t).stdout; strings.Contains(out, `"size": 10485760`) || !strings.Contains(out, `"size": 100,`) {
		t.Errorf("inspect still shows the removed bandwidth limit, or lost the ops limit:\n%s", out)
	}
	env.run(t, "update", "limited", "--drive", "drive0=ops=0").ok(t)
	if out := env.run(t, "inspect", "limited").ok(t).stdout; strings.Contains(out, `"rate_limiter"`) {
		t.Errorf("inspect shows a rate limiter after every limit was removed:\n%s", out)
	}
	env.run(t, "update", "limited", "--drive", "nope=bw=10M").fails(t, ExitError, "drive nope")
	env.run(t, "update", "limited").fails(t, ExitUsage, "nothing to update")
	env.run(t, "update", "gone", "--drive", "drive0=bw=1M").fails(t, ExitError, "gone")
}
