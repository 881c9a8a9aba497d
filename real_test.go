package smartvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// The TestReal tests boot the project's test guest with the real Firecracker named by
// SMARTVM_FIRECRACKER_BIN, and skip without it.

// realVM boots the test guest in guest mode with the real Firecracker, in boot mode, on a
// fresh runtime root checked for leftovers, and follows its console. edit, when not nil,
// changes the spec first.
func realVM(t *testing.T, boot BootMode, guest string, edit func(*MachineSpec)) (*Machine, *console) {
	t.Helper()
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	mgr := newManager(t, testRoot(t), bin)
	spec := guestSpec(guestKernel(t), guest)
	spec.BootMode = boot
	if edit != nil {
		edit(&spec)
	}
	m := start(t, mgr, spec)
	return m, followConsole(t, m)
}

// TestRealLifecycle boots the counter guest, shows that pause stops the counter and resume
// restarts it, stops the VM gracefully (the guest resets on Ctrl-Alt-Del, so Firecracker
// exits 0) and checks that nothing is left.
func TestRealLifecycle(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		m, con := realVM(t, mode, testguest.ModeCounter, nil)
		con.waitFor(t, testguest.TickLine(0))

		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := m.State(ctx); err != nil || st != StatePaused {
			t.Fatalf("state after pause: %v, %v", st, err)
		}
		con.drain(100 * time.Millisecond) // ticks written before the pause took hold
		if got := con.drain(300 * time.Millisecond); len(got) != 0 {
			t.Fatalf("the counter went on while paused: %q", got)
		}
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := m.State(ctx); err != nil || st != StateRunning {
			t.Fatalf("state after resume: %v, %v", st, err)
		}
		before := con.nextTick(t)
		if after := con.nextTick(t); after <= before {
			t.Fatalf("tick %d after %d", after, before)
		}

		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Wait(ctx); err != nil {
			t.Fatalf("wait after a graceful stop: %v, want nil (exit 0)", err)
		}
		if st, _ := m.State(ctx); st != StateExited {
			t.Fatalf("state after stop: %v", st)
		}
		if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("runtime dir left after stop: %v", err)
		}
	})
}

// TestRealGuestRebootExitsZero boots the hello guest, which prints its marker and resets:
// Wait returns nil and the VM cleans up after itself without Close.
func TestRealGuestRebootExitsZero(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		m, con := realVM(t, mode, testguest.ModeHello, nil)
		if err := wait(t, m); err != nil {
			t.Fatalf("wait: %v, want nil", err)
		}
		con.waitFor(t, testguest.HelloLine)
		if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("runtime dir left after the guest ended: %v", err)
		}
	})
}

// TestRealOwnerKilled kills a process that owns a VM with SIGKILL: Firecracker must be gone
// within a second, and the next manager reaps the VM's directory and its vsock socket, which
// the spec put outside the runtime root.
func TestRealOwnerKilled(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	spec := guestSpec(guestKernel(t), testguest.ModeHalt)
	vsock := filepath.Join(t.TempDir(), "vm.vsock")
	spec.Vsock = &VsockSpec{CID: 3, Path: vsock}
	owner, pid := runOwner(t, ownerArgs{Root: root, Binary: bin, Spec: spec})
	if _, err := os.Lstat(vsock); err != nil {
		t.Fatalf("no vsock socket while the vm runs: %v", err)
	}
	killOwner(t, owner)
	if !processGone(pid, time.Second) {
		t.Fatalf("firecracker %d outlived its owner by more than 1s", pid)
	}
	newManager(t, root, bin) // reaps
	if _, err := os.Lstat(vsock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dead vm's vsock socket was left: %v", err)
	}
}

// TestRealConcurrentStarts starts 20 VMs at once with one manager: all boot, and all clean
// up when the manager closes.
func TestRealConcurrentStarts(t *testing.T) {
	bin := testutil.FirecrackerBin(t)
	testutil.CheckLeaks(t)
	root := testRoot(t)
	mgr := newManager(t, root, bin)
	kernel := guestKernel(t)
	ms := startMany(t, mgr, 20, func(i int) MachineSpec {
		spec := guestSpec(kernel, testguest.ModeHalt)
		spec.Name = fmt.Sprintf("vm%02d", i)
		return spec
	})
	for _, m := range ms {
		followConsole(t, m).waitFor(t, testguest.HaltLine)
	}
	if err := mgr.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, ms)
}

// realVsockVM boots the vsock-echo guest with a vsock device under the real Firecracker.
func realVsockVM(t *testing.T, boot BootMode) *Machine {
	t.Helper()
	m, con := realVM(t, boot, testguest.ModeVsockEcho, func(s *MachineSpec) {
		s.Name = "vsock"
		s.Vsock = &VsockSpec{CID: 3}
	})
	con.waitFor(t, testguest.VsockReadyLine)
	return m
}

// TestRealDialVsock checks DialVsock and ListenVsock against the real Firecracker and the
// vsock-echo guest: port 52 echoes, a port nobody listens on fails with the clear error,
// and the guest's call to the host reaches a ListenVsock listener.
func TestRealDialVsock(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		m := realVsockVM(t, mode)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		t0 := time.Now()
		c, err := m.DialVsock(ctx, testguest.VsockEchoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		t.Logf("DialVsock: %v", time.Since(t0))
		checkEcho(t, c, "hello over vsock")
		checkEcho(t, c, strings.Repeat("x", 100<<10))

		// The guest's polling driver answers the refused connection; on a loaded host that
		// can take well over a second of its slow vCPU.
		short, cancelShort := context.WithTimeout(ctx, 10*time.Second)
		defer cancelShort()
		_, err = m.DialVsock(short, 53)
		if !errors.Is(err, ErrNoVsockListener) || !strings.Contains(err.Error(), "nobody listened on port 53") {
			t.Fatalf("dial port 53: %v, want ErrNoVsockListener saying nobody listened on port 53", err)
		}

		ln, err := m.ListenVsock(testguest.VsockEchoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Now().Add(waitLong))
		call, err := ln.Accept()
		if err != nil {
			t.Fatalf("no call from the guest: %v", err)
		}
		defer call.Close()
		checkEcho(t, call, "the guest called")
	})
}

// TestRealDialVsockAfterRestore snapshots the vsock-echo guest, restores it in a new
// Firecracker and dials it again.
func TestRealDialVsockAfterRestore(t *testing.T) {
	m := realVsockVM(t, BootModeAPI)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := m.DialVsock(ctx, testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "before the snapshot")
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := m.mgr.Restore(ctx, snap, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	t0 := time.Now()
	c, err = r.DialVsock(ctx, testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("DialVsock after restore: %v", time.Since(t0))
	checkEcho(t, c, "after the restore")
}
