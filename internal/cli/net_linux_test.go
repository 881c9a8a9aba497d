package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
	"github.com/smartvm/smartvm/netdev"
)

// envTestUplink, set for a supervisor started by inTestNetns, makes it add an uplink to its
// new network namespace before it starts the VM.
const envTestUplink = "SMARTVM_TEST_UPLINK"

// inTestNetns starts a detached supervisor, and so the VM's Firecracker, in a new network
// namespace, where --net creates its TAP devices and NAT rules without touching the host's.
// The namespace goes away with the last of its processes.
func inTestNetns(cmd *exec.Cmd) {
	cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNET
	cmd.Env = append(os.Environ(), envTestUplink+"=1")
}

// netProbeMain, in a new network namespace, adds the test uplink and sets up and tears down a
// NAT network, with state in the directory args[0]: it exits 0 when the tests' supervisors can
// do the same.
func netProbeMain(args []string) int {
	err := testutil.AddUplink()
	if err == nil {
		var n *netdev.Network
		if n, err = netdev.Setup(context.Background(), netdev.Config{Owner: "cli-probe", Dir: args[0], NAT: true}); err == nil {
			err = n.Teardown(context.Background())
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

var netProbe struct {
	once sync.Once
	err  error
}

// requireTestNetns skips the test unless it runs as root, with the ip tool, and a network
// namespace can get a veth uplink and NAT (nf_tables with masquerading). It probes once.
func requireTestNetns(t *testing.T) {
	t.Helper()
	testutil.RequiresRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip tool (iproute2):", err)
	}
	netProbe.once.Do(func() {
		dir, err := os.MkdirTemp("", "smartvm-netprobe-")
		if err != nil {
			netProbe.err = err
			return
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command(testutil.Link(t, "smartvm-netprobe"), dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		if out, err := cmd.CombinedOutput(); err != nil {
			netProbe.err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
		}
	})
	if netProbe.err != nil {
		t.Skipf("cannot set up a network with NAT in a test namespace (veth, nf_tables, nft_masq): %v", netProbe.err)
	}
}

// netEnv is fakeEnv whose detached supervisors run in network namespaces of their own. It
// skips the test where those cannot be made (requireTestNetns).
func netEnv(t *testing.T) cliEnv {
	t.Helper()
	requireTestNetns(t)
	env := fakeEnv(t)
	env[testNetns] = "1"
	return env
}

// netInfo is the part of inspect's network record the tests read.
type netInfo struct {
	GuestIP string `json:"guest_ip"`
	Network struct {
		NICs []struct {
			TAP     string `json:"tap"`
			GuestIP string `json:"guest_ip"`
		} `json:"nics"`
		NAT      *struct{ Uplink string } `json:"nat"`
		Netns    *struct{ Path string }   `json:"netns"`
		BootArgs string                   `json:"boot_args"`
	} `json:"network"`
}

func (e cliEnv) inspectNet(t *testing.T, name string) netInfo {
	t.Helper()
	var n netInfo
	if err := json.Unmarshal([]byte(e.run(t, "inspect", name).ok(t).stdout), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// netDevices lists the network devices in pid's network namespace.
func netDevices(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkNoLeases fails the test if the runtime root's network state holds a lease or record.
func checkNoLeases(t *testing.T, env cliEnv) {
	t.Helper()
	for _, sub := range []string{"leases", "networks"} {
		ents, _ := os.ReadDir(filepath.Join(env[envRuntimeDir], "net", sub))
		for _, e := range ents {
			t.Errorf("net/%s/%s left behind", sub, e.Name())
		}
	}
}

// run --net gives the VM a NIC with NAT, --no-nat one without, --net-ip-arg the ip= argument;
// ps and inspect show the guest's address; stop removes it all.
func TestRunNet(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	cad := bootArgs(testguest.ModeCAD) // stops at once
	env.run(t, "run", "-d", "--rm", "--net", "--name", "web", "--image", "hello", "--boot-args", cad).ok(t)
	env.run(t, "run", "-d", "--rm", "--net", "--no-nat", "--net-ip-arg", "--name", "quiet", "--image", "hello", "--boot-args", cad).ok(t)
	env.run(t, "run", "-d", "--rm", "--name", "offline", "--image", "hello", "--boot-args", cad).ok(t)
	defer env.run(t, "kill", "web", "quiet", "offline")

	web, quiet := env.inspectNet(t, "web"), env.inspectNet(t, "quiet")
	if web.GuestIP == "" || len(web.Network.NICs) != 1 || web.Network.NICs[0].GuestIP != web.GuestIP || web.Network.NAT == nil {
		t.Errorf("inspect web: %+v", web)
	}
	if quiet.GuestIP == "" || quiet.GuestIP == web.GuestIP || quiet.Network.NAT != nil ||
		!strings.HasPrefix(quiet.Network.BootArgs, "ip="+quiet.GuestIP) {
		t.Errorf("inspect quiet: %+v (web has %s)", quiet, web.GuestIP)
	}
	if web.Network.BootArgs != "" {
		t.Errorf("web boots with %q, which it did not ask for", web.Network.BootArgs)
	}

	byName := map[string]psEntry{}
	for _, vm := range env.ps(t) {
		byName[vm.Name] = vm
	}
	if byName["web"].GuestIP != web.GuestIP || byName["quiet"].GuestIP != quiet.GuestIP || byName["offline"].GuestIP != "" {
		t.Errorf("ps --json guest addresses: %+v", byName)
	}
	table := env.run(t, "ps").ok(t).stdout
	for _, want := range []string{" IP ", " " + web.GuestIP + " ", " " + quiet.GuestIP + " "} {
		if !strings.Contains(table, want) {
			t.Errorf("ps does not show %q:\n%s", want, table)
		}
	}

	// The TAP is in the supervisor's namespace, never in the host's.
	tap := web.Network.NICs[0].TAP
	if devs := netDevices(t, byName["web"].PID); !strings.Contains(devs, tap+":") {
		t.Errorf("firecracker's namespace lacks the TAP %s:\n%s", tap, devs)
	}
	if devs := netDevices(t, os.Getpid()); strings.Contains(devs, tap+":") {
		t.Errorf("the TAP %s is in the host's namespace", tap)
	}

	env.run(t, "stop", "web", "quiet", "offline").ok(t)
	for _, vm := range byName {
		assertGone(t, vm)
	}
	checkNoLeases(t, env)
}

func TestRunNetNamespace(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	env.run(t, "run", "-d", "--rm", "--net-namespace", "--no-nat", "--name", "walled", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	vm := env.psOne(t, "walled")
	n := env.inspectNet(t, "walled")
	if n.Network.Netns == nil || n.GuestIP == "" || n.GuestIP == n.Network.NICs[0].GuestIP {
		t.Errorf("inspect: %+v (want the namespace's address as the guest's)", n)
	}
	tap := n.Network.NICs[0].TAP
	if devs := netDevices(t, vm.PID); !strings.Contains(devs, tap+":") {
		t.Errorf("firecracker's namespace lacks the TAP %s:\n%s", tap, devs)
	}
	env.run(t, "stop", "walled").ok(t)
	assertGone(t, vm)
	if _, err := os.Stat(n.Network.Netns.Path); err == nil {
		t.Errorf("namespace %s left behind", n.Network.Netns.Path)
	}
	checkNoLeases(t, env)
}

// smartvmNoNetAdmin is smartvm without CAP_NET_ADMIN, even as root: it drops the capability
// from its bounding set and executes smartvm again, which then starts without it.
func smartvmNoNetAdmin(args []string) int {
	runtime.LockOSThread() // the bounding set is per thread; exec happens from this one
	const capNetAdmin = 12
	if err := unix.Prctl(unix.PR_CAPBSET_DROP, capNetAdmin, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "drop CAP_NET_ADMIN:", err)
		return 1
	}
	self, err := os.Executable()
	if err == nil {
		err = syscall.Exec(self, append([]string{"smartvm"}, args...), os.Environ())
	}
	fmt.Fprintln(os.Stderr, "exec smartvm:", err)
	return 1
}

// Without CAP_NET_ADMIN, run --net fails with the library's explanation and the fix, and
// leaves nothing behind. smartvm runs as a process of its own, in a new network namespace.
func TestRunNetWithoutPrivilege(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	cmd := exec.Command(testutil.Link(t, "smartvm-nonetadmin"), "run", "--net", "--name", "unprivileged", "--image", "hello")
	cmd.Env = []string{"GORACE=atexit_sleep_ms=0"}
	for k, v := range env {
		if !strings.HasPrefix(k, "\x00") {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("run: %v, want exit code 1\n%s", err, errOut.String())
	}
	result{stdout: out.String(), stderr: errOut.String(), code: ee.ExitCode()}.fails(t, ExitError, "CAP_NET_ADMIN")
	checkNoLeases(t, env)
}

// fakeSSH writes an ssh that records its arguments and stdin in dir and exits 7, and
// returns dir, for PATH.
func fakeSSH(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\nprintf '%s\\n' \"$@\" > " + dir + "/argv\ncat > " + dir + "/stdin\nexit 7\n"
	if err := os.WriteFile(filepath.Join(dir, "ssh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// smartvm ssh runs ssh with the VM's address and the key, passes stdin and the exit code on,
// and explains each reason it cannot.
func TestSSH(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	halt := bootArgs(testguest.ModeHalt)
	env.run(t, "run", "-d", "--rm", "--net", "--no-nat", "--name", "box", "--image", "hello", "--boot-args", halt).ok(t)
	env.run(t, "run", "-d", "--rm", "--name", "nonet", "--image", "hello", "--boot-args", halt).ok(t)
	defer env.run(t, "kill", "box", "nonet")
	ip := env.inspectNet(t, "box").GuestIP
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}

	env.run(t, "ssh", "box").fails(t, ExitError, "vm box was not started from a base image, so smartvm has no key for it: pass -i")
	env.run(t, "ssh", "-i", key, "nonet").fails(t, ExitError, "vm nonet has no network: start it with --net")
	env.run(t, "ssh", "-i", key, "ghost").fails(t, ExitError, `no running vm is called "ghost"`)
	env.run(t, "ssh", "-i", key, "box").fails(t, ExitError, "ssh client not found in PATH: install it (the package is openssh-client")
	env.run(t, "ssh").fails(t, ExitUsage, "want a VM name")

	dir := fakeSSH(t)
	env["PATH"] = dir
	var out, errOut testutil.SyncBuffer
	r := env.runIO(t.Context(), strings.NewReader("typed"), &out, &errOut, "ssh", "box", "-i", key, "--", "uname", "-a")
	if r.code != 7 || strings.Contains(r.stderr, "smartvm:") {
		t.Errorf("ssh exited %d, want ssh's 7 and no message:\n%s", r.code, r.stderr)
	}
	want := "-i\n" + key + "\n-o\nStrictHostKeyChecking=no\n-o\nUserKnownHostsFile=/dev/null\n-o\nLogLevel=ERROR\nroot@" + ip + "\n--\nuname\n-a\n"
	if b, _ := os.ReadFile(filepath.Join(dir, "argv")); string(b) != want {
		t.Errorf("ssh's arguments:\n%s\nwant:\n%s", b, want)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "stdin")); string(b) != "typed" {
		t.Errorf("ssh read %q on stdin, want what smartvm was given", b)
	}
	env.run(t, "ssh", "--user", "ubuntu", "--identity", key, "box")
	if b, _ := os.ReadFile(filepath.Join(dir, "argv")); !strings.HasSuffix(string(b), "\nubuntu@"+ip+"\n") {
		t.Errorf("ssh --user ubuntu ran ssh with:\n%s", b)
	}
}

// With a real Firecracker, run --net gives the VM a TAP that Firecracker holds while it runs,
// and stop removes it all.
func TestRealRunNet(t *testing.T) {
	testutil.CheckLeaks(t)
	fc := testutil.FirecrackerBin(t)
	requireTestNetns(t)
	env := vmEnv(t, fc)
	env[testNetns] = "1"
	env.run(t, "run", "-d", "--rm", "--net", "--name", "realnet", "--image", "hello", "--boot-args", bootArgs(testguest.ModeCAD)).ok(t)
	vm := env.psOne(t, "realnet")
	n := env.inspectNet(t, "realnet")
	if vm.GuestIP == "" || vm.GuestIP != n.GuestIP || len(n.Network.NICs) != 1 || n.Network.NAT == nil {
		t.Errorf("ps says %q; inspect: %+v", vm.GuestIP, n)
	}
	tap := n.Network.NICs[0].TAP
	if !holdsTAP(t, vm.PID, tap) {
		t.Errorf("firecracker does not hold the TAP %s open", tap)
	}
	if r := env.run(t, "ps").ok(t); !strings.Contains(r.stdout, " "+vm.GuestIP+" ") {
		t.Errorf("ps does not show the guest's address:\n%s", r.stdout)
	}
	env.run(t, "stop", "realnet").ok(t)
	assertGone(t, vm)
	checkNoLeases(t, env)
}

// holdsTAP reports whether process pid has the TAP device tap open: a /dev/net/tun file
// whose fdinfo names the device.
func holdsTAP(t *testing.T, pid int, tap string) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, _ := os.Readlink(filepath.Join(dir, e.Name())); target != "/dev/net/tun" {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if strings.Contains(string(info), "iff:\t"+tap+"\n") {
			return true
		}
	}
	return false
}

// An uplink that does not exist fails the start, and the error says which flags help.
func TestRunNetUplinkHint(t *testing.T) {
	testutil.CheckLeaks(t)
	env := netEnv(t)
	env.run(t, "run", "-d", "--rm", "--net", "--uplink", "nosuch0", "--name", "upl", "--image", "hello").fails(t, ExitError,
		"hint: name the host device that reaches the outside with --uplink DEV (see 'ip route'), or use --no-nat to reach only the host")
	checkNoLeases(t, env)
}
