package netdev

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// attachTAP tries to open the TAP called name in the namespace ns as Firecracker does
// (TUNSETIFF without IFF_TUN_EXCL), and closes it again: EBUSY means another process holds it.
func attachTAP(t *testing.T, ns *os.File, name string) error {
	t.Helper()
	var fd int
	if err := inNetns(ns, func() (err error) {
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
}

// sameFile reports whether two paths are the same inode (namespace files included).
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}

// TestRealFirecrackerHoldsTAP boots the test guest under the real Firecracker, started inside
// the VM's namespace with a NIC on the TAP Setup made: the TAP is held while Firecracker runs
// and is gone after teardown.
func TestRealFirecrackerHoldsTAP(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	ns := enterTestNetns(t)
	ns.addUplink(t)
	dir, nsDir, vmDir := t.TempDir(), t.TempDir(), t.TempDir()
	ctx := context.Background()
	n := setupOK(t, Config{Owner: "real", Dir: dir, NAT: true, Netns: true, NetnsDir: nsDir})
	tornDown := false
	t.Cleanup(func() {
		if !tornDown {
			n.Teardown(ctx)
		}
	})
	nic := n.NICs[0]

	kernel := filepath.Join(vmDir, "vmlinux")
	if err := testguest.Write(kernel); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel, "boot_args": testguest.BootArgs(testguest.ModeHalt)},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 64},
		"network-interfaces": []any{map[string]any{
			"iface_id": nic.ID, "host_dev_name": nic.TAP, "guest_mac": nic.MAC,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath, sock, logPath := filepath.Join(vmDir, "config.json"), filepath.Join(vmDir, "api.sock"), filepath.Join(vmDir, "firecracker.log")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	// Firecracker's log goes to its own file, so that stdout is the guest's serial alone.
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var serial, stderr testutil.SyncBuffer
	cmd := exec.Command(bin, "--api-sock", sock, "--config-file", cfgPath, "--log-path", logPath, "--level", "Info")
	cmd.Stdout, cmd.Stderr = &serial, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := InNetns(n.Netns.Path, cmd.Start); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)

	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(serial.String(), testguest.HaltLine) {
		select {
		case err := <-done:
			stopped = true
			log, _ := os.ReadFile(logPath)
			t.Fatalf("firecracker exited early: %v\nserial: %s\nstderr: %s\nlog: %s", err, serial.String(), stderr.String(), log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("the guest did not start\nserial: %s\nstderr: %s\nlog: %s", serial.String(), stderr.String(), log)
		}
	}

	// Firecracker runs in the VM's namespace and has the NIC configured.
	if !sameFile(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/net", n.Netns.Path) {
		t.Error("firecracker does not run in the VM's network namespace")
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://localhost/vm/config")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"host_dev_name":"`+nic.TAP+`"`) || !strings.Contains(string(body), nic.MAC) {
		t.Errorf("firecracker's /vm/config has no NIC on %s with %s: %s", nic.TAP, nic.MAC, body)
	}

	// The TAP is held: opening it again fails with EBUSY.
	vf, err := os.Open(n.Netns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer vf.Close()
	if err := attachTAP(t, vf, nic.TAP); !errors.Is(err, unix.EBUSY) {
		t.Errorf("opening the TAP while firecracker runs: %v, want EBUSY", err)
	}

	stop()
	if err := attachTAP(t, vf, nic.TAP); err != nil {
		t.Errorf("opening the TAP after firecracker exited: %v", err)
	}
	if err := n.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	tornDown = true
	if _, err := os.Stat(n.Netns.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace still mounted: %v", err)
	}
	vh, err := nsHandle(vf)
	if err != nil {
		t.Fatal(err)
	}
	defer vh.Close()
	if _, err := vh.LinkByName(nic.TAP); err == nil {
		t.Errorf("TAP %s still exists after teardown", nic.TAP)
	}
	ns.checkClean(t, dir, nsDir)
}
