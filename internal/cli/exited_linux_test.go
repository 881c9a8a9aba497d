package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/rundir"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// exitedEntry is the part of `ps -a --json` and `inspect` an exited VM test reads.
type exitedEntry struct {
	Name     string            `json:"name"`
	State    string            `json:"state"`
	PID      int               `json:"pid"`
	Labels   map[string]string `json:"labels"`
	VMConfig json.RawMessage   `json:"vm_config"`
	Exit     *struct {
		Code    int       `json:"exit_code"`
		Signal  string    `json:"signal"`
		Reason  string    `json:"reason"`
		EndedAt time.Time `json:"ended_at"`
		// MainExitCode is the main process's, for a VM whose init is the agent.
		MainExitCode *int `json:"main_exit_code"`
	} `json:"exit"`
}

// supervisorLives reports whether the owner that a state.json names is a running smartvm.
func supervisorLives(state []byte) bool {
	var st struct {
		OwnerPID int `json:"owner_pid"`
	}
	if json.Unmarshal(state, &st) != nil || st.OwnerPID <= 0 {
		return false
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", st.OwnerPID))
	return strings.TrimSpace(string(comm)) == "smartvm" && processAlive(st.OwnerPID)
}

// orphan kills the supervisor of the only VM, called name: the VM dies with it, and the next
// command records it as exited because its owner died.
func orphan(t *testing.T, env cliEnv, name string) psEntry {
	t.Helper()
	vm := env.psOne(t, name)
	supervisor := supervisorPID(t, vm)
	if err := syscall.Kill(supervisor, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, vm.PID, supervisor)
	if v := waitExited(t, env, name); !strings.HasPrefix(v.Exit.Reason, "owner died") {
		t.Errorf("orphaned vm: %+v", *v.Exit)
	}
	return vm
}

// psAll returns `ps -a --json`, by name.
func (e cliEnv) psAll(t *testing.T) map[string]exitedEntry {
	t.Helper()
	r := e.run(t, "ps", "-a", "--json").ok(t)
	var list []exitedEntry
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("ps -a --json: %v\n%s", err, r.stdout)
	}
	out := map[string]exitedEntry{}
	for _, v := range list {
		out[v.Name] = v
	}
	return out
}

// waitExited waits until ps -a lists VM name as exited, and returns it. When its supervisor
// lives to record the end, it waits for the record in state.json first: ps asks every live
// VM's API for its state, and a request that reaches a real Firecracker (v1.14.2) while its
// guest resets can leave it hung, its vCPU thread gone and its main and API threads waiting.
func waitExited(t *testing.T, env cliEnv, name string) exitedEntry {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	state := filepath.Join(env[envRuntimeDir], "vms", name, "state.json")
	for b, _ := os.ReadFile(state); !strings.Contains(string(b), `"exit":`) && supervisorLives(b) && time.Now().Before(deadline); b, _ = os.ReadFile(state) {
		time.Sleep(10 * time.Millisecond)
	}
	for {
		if v, ok := env.psAll(t)[name]; ok && v.State == "Exited" {
			if v.Exit == nil || v.PID != 0 {
				t.Fatalf("exited vm %s in ps -a: %+v", name, v)
			}
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s never showed as exited: %+v", name, env.psAll(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A detached VM that ends is kept as exited: ps -a lists it with how it ended, logs and
// inspect work on it, its name stays taken, and rm removes it. --rm, and the foreground, keep
// nothing.
func TestExitedVMs(t *testing.T) {
	testutil.CheckLeaks(t)
	testExitedVMs(t, fakeEnv(t))
}

// TestRealExitedVMs is TestExitedVMs with the real Firecracker: the test guest resets (exit
// code 0) or halts and is killed.
func TestRealExitedVMs(t *testing.T) {
	testutil.CheckLeaks(t)
	testExitedVMs(t, vmEnv(t, testutil.FirecrackerBin(t)))
}

func testExitedVMs(t *testing.T, env cliEnv) {
	vms := filepath.Join(env[envRuntimeDir], "vms")

	// The guest ends by itself (it resets: exit code 0).
	env.run(t, "run", "-d", "--name", "done", "--label", "team=a", "--image", "hello").ok(t)
	v := waitExited(t, env, "done")
	if v.Exit.Code != 0 || v.Exit.Reason != "guest reset or shut down (exit code 0)" || time.Since(v.Exit.EndedAt) > time.Minute || v.Labels["team"] != "a" {
		t.Errorf("ps -a: %+v %+v", v, *v.Exit)
	}
	if len(env.ps(t)) != 0 {
		t.Error("plain ps lists an exited vm")
	}
	if r := env.run(t, "ps", "-a").ok(t); !strings.Contains(r.stdout, "exited (0) ") {
		t.Errorf("ps -a table:\n%s", r.stdout)
	}
	ents, _ := os.ReadDir(filepath.Join(vms, "done"))
	var files []string
	for _, e := range ents {
		files = append(files, e.Name())
	}
	if want := []string{"id", "lock", "serial.log", "state.json"}; !slices.Equal(files, want) {
		t.Errorf("the exited vm's directory holds %v, want only %v", files, want)
	}
	if r := env.run(t, "logs", "done").ok(t); r.stdout != testguest.HelloLine+"\n" {
		t.Errorf("logs of an exited vm: %q", r.stdout)
	}
	if r := env.run(t, "logs", "-f", "done").ok(t); r.stdout != testguest.HelloLine+"\n" {
		t.Errorf("logs -f of an exited vm: %q", r.stdout)
	}
	r := env.run(t, "inspect", "done").ok(t)
	var in exitedEntry
	if err := json.Unmarshal([]byte(r.stdout), &in); err != nil || in.State != "Exited" || in.Exit == nil || in.Exit.Code != 0 || in.VMConfig != nil || in.Labels["team"] != "a" {
		t.Errorf("inspect of an exited vm (%v):\n%s", err, r.stdout)
	}
	if r := env.run(t, "inspect", "--format", "{{.State}} {{.Exit.Code}} {{.Exit.Reason}}", "done").ok(t); r.stdout != "Exited 0 guest reset or shut down (exit code 0)\n" {
		t.Errorf("inspect --format: %q", r.stdout)
	}
	env.run(t, "run", "-d", "--name", "done", "--image", "hello").fails(t, ExitError, `the name "done" is taken by a vm that exited; remove it with smartvm rm done`)
	env.run(t, "stop", "done").fails(t, ExitError, "vm done has exited")
	env.run(t, "kill", "done").fails(t, ExitError, "vm done has exited")

	// Firecracker crashes (is killed from outside).
	env.run(t, "run", "-d", "--name", "crash", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	pid := env.psAll(t)["crash"].PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if v := waitExited(t, env, "crash"); v.Exit.Signal != "SIGKILL" || v.Exit.Reason != "firecracker killed by signal SIGKILL" {
		t.Errorf("crashed vm: %+v", *v.Exit)
	}

	// Its supervisor is killed: the vm dies with it, and the next command records it.
	env.run(t, "run", "-d", "--name", "orphan", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	vm := orphan(t, env, "orphan")
	if r := env.run(t, "ps", "-a").ok(t); !strings.Contains(r.stdout, "exited (owner died) ") || !strings.Contains(r.stdout, "exited (SIGKILL) ") {
		t.Errorf("ps -a table:\n%s", r.stdout)
	}
	if _, err := os.Stat(vm.APISocket); err == nil {
		t.Error("the orphan's API socket is left")
	}

	// kill leaves the record; rm refuses a running vm, rm -f kills and removes it.
	env.run(t, "run", "-d", "--name", "killed", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	env.run(t, "kill", "killed").ok(t)
	if v := waitExited(t, env, "killed"); v.Exit.Reason != "stopped: firecracker killed by signal SIGKILL" {
		t.Errorf("killed vm: %+v", *v.Exit)
	}
	env.run(t, "run", "-d", "--name", "live", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	live := env.psOne(t, "live")
	env.run(t, "rm", "live").fails(t, ExitError, "vm live is running: stop it first, or use rm -f live")
	if r := env.run(t, "rm", "-f", "live").ok(t); r.stdout != "live\n" {
		t.Errorf("rm -f printed %q", r.stdout)
	}
	assertGone(t, live)

	// Remove every exited vm at once.
	r = env.run(t, "ps", "-aq", "-f", "state=exited").ok(t)
	names := strings.Fields(r.stdout)
	if !slices.Equal(names, []string{"crash", "done", "killed", "orphan"}) {
		t.Fatalf("ps -aq -f state=exited: %q", r.stdout)
	}
	if r := env.run(t, append([]string{"rm"}, names...)...).ok(t); r.stdout != "crash\ndone\nkilled\norphan\n" {
		t.Errorf("rm printed %q", r.stdout)
	}
	env.run(t, "rm", "done").fails(t, ExitError, `no vm is called "done" (see 'smartvm ps -a')`)
	waitEmpty(t, env)

	// --rm keeps nothing; neither does the foreground, unless --rm=false.
	env.run(t, "run", "-d", "--rm", "--name", "brief", "--image", "hello").ok(t)
	waitEmpty(t, env)
	env.run(t, "run", "--image", "hello").ok(t)
	waitEmpty(t, env)
	env.run(t, "run", "--rm=false", "--name", "fg", "--image", "hello").ok(t)
	waitExited(t, env, "fg")
	// prune removes every exited vm, and leaves running ones alone.
	env.run(t, "run", "-d", "--name", "live", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	if r := env.run(t, "prune").ok(t); r.stdout != "fg\n" {
		t.Errorf("prune printed %q", r.stdout)
	}
	if r := env.run(t, "ps", "-aq").ok(t); r.stdout != "live\n" {
		t.Errorf("after prune, ps -aq: %q", r.stdout)
	}
	env.run(t, "rm", "-f", "live").ok(t)
	if r := env.run(t, "prune").ok(t); r.stdout != "" {
		t.Errorf("prune with nothing to remove printed %q", r.stdout)
	}
	waitEmpty(t, env)
}

// A networked VM kept as exited gives its network back: its address lease and network record
// go when it is stopped, and when its supervisor dies and a later command records it.
func TestExitedVMNet(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	cad := bootArgs(testguest.ModeCAD)
	env.run(t, "run", "-d", "--net", "--name", "stopped", "--image", "hello", "--boot-args", cad).ok(t)
	if env.inspectNet(t, "stopped").GuestIP == "" {
		t.Fatal("the vm has no address")
	}
	env.run(t, "stop", "stopped").ok(t)
	if v := waitExited(t, env, "stopped"); !strings.HasPrefix(v.Exit.Reason, "stopped: ") {
		t.Errorf("stopped vm: %+v", *v.Exit)
	}
	if n := env.inspectNet(t, "stopped"); n.GuestIP != "" || n.Network.NICs != nil {
		t.Errorf("an exited vm shows a network: %+v", n)
	}
	checkNoLeases(t, env)

	env.run(t, "run", "-d", "--net", "--name", "orphan", "--image", "hello", "--boot-args", cad).ok(t)
	orphan(t, env, "orphan")
	checkNoLeases(t, env)
	env.run(t, "rm", "stopped", "orphan").ok(t)
	waitEmpty(t, env)
}

// rm of a VM that is ending right now (its process gone, its owner still recording it as
// exited) waits for the record, and removes it: nothing is left.
func TestRmWaitsForAnEndingVM(t *testing.T) {
	env := fakeEnv(t)
	root, err := rundir.Open(env[envRuntimeDir], nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := root.Create(t.Context(), "ending")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteState(&rundir.State{Name: "ending", PID: 999999999, StartTime: 1, Keep: true, Mode: "detached"}); err != nil {
		t.Fatal(err)
	}
	// The owner records the end a while after rm has started.
	recorded := make(chan error, 1)
	time.AfterFunc(500*time.Millisecond, func() {
		recorded <- d.Keep(context.Background(), rundir.Exit{Code: -1, Signal: "SIGKILL", Reason: "killed"})
	})
	env.run(t, "rm", "-f", "ending").ok(t)
	if err := <-recorded; err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, env)
}
