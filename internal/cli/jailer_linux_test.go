package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// jailEnv is vmEnv with the fake firecracker and the fake jailer beside it.
func jailEnv(t *testing.T) cliEnv {
	t.Helper()
	testutil.RequiresRoot(t)
	fc := testutil.HardLink(t, "firecracker")
	if err := os.Link(fc, filepath.Join(filepath.Dir(fc), "jailer")); err != nil {
		t.Fatal(err)
	}
	return vmEnv(t, fc)
}

func TestRunJailed(t *testing.T) {
	testutil.CheckLeaks(t)
	env := jailEnv(t)
	base := filepath.Join(t.TempDir(), "jailer")
	// As root with a jailer of firecracker's release beside it, run jails by default.
	r := env.run(t, "--log-level", "debug", "run", "--image", "hello", "--chroot-base", base)
	if r.code != 0 || !strings.Contains(r.stderr, "jail prepared") || !strings.Contains(r.stdout, "smartvm-testguest: hello") {
		t.Fatalf("run: code %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
	r = env.run(t, "--log-level", "debug", "run", "--image", "hello", "--no-jailer")
	if r.code != 0 || strings.Contains(r.stderr, "jail prepared") {
		t.Errorf("--no-jailer: code %d\n%s", r.code, r.stderr)
	}
	env.run(t, "run", "--image", "hello", "--no-jailer", "--memory-limit", "1G").fails(t, ExitUsage, "--no-jailer cannot be combined")
	env.run(t, "run", "--image", "hello", "--cpu-quota", "-1").fails(t, ExitUsage, "invalid --cpu-quota")
	env.run(t, "run", "--image", "hello", "--memory-limit", "lots").fails(t, ExitUsage, "invalid --memory-limit")

	// A --file spec's jailer settings are used, and --no-jailer drops them.
	kernel := filepath.Join(t.TempDir(), "guest.elf")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	specFile := filepath.Join(t.TempDir(), "spec.json")
	os.WriteFile(specFile, []byte(`{"kernel": "`+kernel+`", "boot_args": "`+bootArgs(testguest.ModeHello)+`", "jailer": {"chroot_base": "`+base+`"}}`), 0o600)
	if r := env.run(t, "--log-level", "debug", "run", "-f", specFile); r.code != 0 || !strings.Contains(r.stderr, "jail prepared") {
		t.Errorf("run -f with a jailer: code %d\n%s", r.code, r.stderr)
	}
	if r := env.run(t, "--log-level", "debug", "run", "-f", specFile, "--no-jailer"); r.code != 0 || strings.Contains(r.stderr, "jail prepared") {
		t.Errorf("run -f --no-jailer: code %d\n%s", r.code, r.stderr)
	}

	other := filepath.Join(t.TempDir(), "jailer")
	os.WriteFile(other, []byte("#!/bin/sh\necho Jailer v1.10.1\n"), 0o755)
	env[envJailerBin] = other
	env.run(t, "run", "--image", "hello", "--jailer", "--chroot-base", base).fails(t, ExitError, "versions differ")
	// Without --jailer, one of another release is not used.
	if r := env.run(t, "run", "--image", "hello", "--chroot-base", base); r.code != 0 {
		t.Errorf("run with a mismatched jailer available: code %d\n%s", r.code, r.stderr)
	}
}

// Deciding whether to jail by default asks for the jailer's version once per binary: later
// runs, foreground or detached, find it cached in the runtime root and spawn no probe.
func TestRunJailerProbeCached(t *testing.T) {
	env := jailEnv(t)
	calls := filepath.Join(t.TempDir(), "calls")
	probe := filepath.Join(t.TempDir(), "jailer")
	os.WriteFile(probe, []byte("#!/bin/sh\necho x >> "+calls+"\necho Jailer v1.10.1\n"), 0o755)
	env[envJailerBin] = probe
	for _, args := range [][]string{{"run", "--image", "hello"}, {"run", "--image", "hello"}, {"run", "-d", "--image", "hello"}} {
		r := env.run(t, args...)
		if r.code != 0 {
			t.Fatalf("%q: code %d\n%s", args, r.code, r.stderr)
		}
		if args[1] == "-d" {
			env.run(t, "rm", "-f", strings.TrimSpace(r.stdout))
		}
	}
	if b, _ := os.ReadFile(calls); strings.Count(string(b), "x") != 1 {
		t.Errorf("the jailer was run %d times for its version; want once, then the cache", strings.Count(string(b), "x"))
	}
}

func TestDoctorJailer(t *testing.T) {
	env := jailEnv(t)
	var rep doctorReport
	json.Unmarshal([]byte(env.run(t, "doctor", "--json").stdout), &rep)
	var c check
	for _, x := range rep.Checks {
		if x.Name == "jailer" {
			c = x
		}
	}
	if c.Status != checkOK || !strings.Contains(c.Detail, "v1.14.2") || !strings.Contains(c.Detail, "cgroups") {
		t.Errorf("jailer check: %+v", c)
	}
	env[envJailerBin] = filepath.Join(t.TempDir(), "missing")
	json.Unmarshal([]byte(env.run(t, "doctor", "--json").stdout), &rep)
	for _, x := range rep.Checks {
		if x.Name == "jailer" && (x.Status != checkWarn || !strings.Contains(x.Detail, "VMs run unjailed")) {
			t.Errorf("missing jailer: %+v", x)
		}
	}
}

// rm -f finds a jailed VM whose state.json is corrupt by its jail, and nothing of it is left.
func TestCorruptJailedRemoveCLI(t *testing.T) {
	testutil.CheckLeaks(t)
	env := jailEnv(t)
	base := filepath.Join(t.TempDir(), "jailer")
	env.run(t, "run", "-d", "--rm", "--name", "jc", "--image", "hello", "--chroot-base", base, "--boot-args", bootArgs(testguest.ModeCounter)).ok(t)
	t.Cleanup(func() { env.run(t, "kill", "jc") }) // if the test stops early
	vms := env.ps(t)
	if len(vms) != 1 {
		t.Fatalf("ps: %+v", vms)
	}
	os.WriteFile(filepath.Join(vms[0].RuntimeDir, "state.json"), []byte("{garbage"), 0o600)
	env.run(t, "rm", "-f", "jc").ok(t)
	assertGone(t, vms[0])
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
}

// A jailed VM's snapshot restores under another name and clones, each VM in a jail of its
// own, and nothing is left once they are removed.
func TestRestoreJailedRenamed(t *testing.T) {
	testutil.CheckLeaks(t)
	env := jailEnv(t)
	base := filepath.Join(t.TempDir(), "jailer")
	runCounter(t, env, "jr", "--chroot-base", base)
	dir := filepath.Join(t.TempDir(), "snap")
	env.run(t, "snapshot", "--stop", "jr", dir).ok(t)
	env.run(t, "restore", "-d", "--rm", "--name", "jr2", dir).ok(t)
	names := strings.Fields(env.run(t, "clone", "-d", "--rm", "--count", "2", dir).ok(t).stdout)
	vms := env.ps(t)
	if len(names) != 2 || len(vms) != 3 {
		t.Fatalf("clones %v; ps %+v", names, vms)
	}
	for _, vm := range vms {
		if !strings.HasPrefix(vm.APISocket, filepath.Join(base, "firecracker", vm.Name)+"/") {
			t.Errorf("vm %s's API socket %s is not in its jail", vm.Name, vm.APISocket)
		}
	}
	env.run(t, append([]string{"rm", "-f", "jr2"}, names...)...).ok(t)
	waitEmpty(t, env)
	if ents, _ := os.ReadDir(filepath.Join(base, "firecracker")); len(ents) != 0 {
		t.Errorf("left under the chroot base: %v", ents)
	}
}
