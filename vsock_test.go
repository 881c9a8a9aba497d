package smartvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
)

// vsockGuest is the vsock-echo guest with a vsock device (socket in the VM's directory).
func vsockGuest(kernel string) MachineSpec {
	spec := guestSpec(kernel, testguest.ModeVsockEcho)
	spec.Vsock = &VsockSpec{CID: 3}
	return spec
}

// checkEcho sends msg over c and expects it back, then half-closes c and expects EOF.
func checkEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitLong))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo: %v (got %q)", err, got)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestDialVsockEcho(t *testing.T) {
	bothModes(t, func(t *testing.T, mode BootMode) {
		mgr, _, kernel := fakeSetup(t)
		spec := vsockGuest(kernel)
		spec.BootMode = mode
		m := start(t, mgr, spec)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		// No wait for the guest's ready line: DialVsock waits for the driver.
		c, err := m.DialVsock(ctx, testguest.VsockEchoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		checkEcho(t, c, "hello vsock\n")
		big := strings.Repeat("0123456789abcdef", 4096)
		checkEcho(t, c, big)

		// Two connections at once.
		c2, err := m.DialVsock(ctx, testguest.VsockEchoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		checkEcho(t, c2, "second")
		checkEcho(t, c, "first again")

		sock, err := m.VsockSocket()
		if err != nil || sock != filepath.Join(m.Dir(), "vsock.sock") {
			t.Errorf("VsockSocket() = %q, %v", sock, err)
		}
	})
}

func TestDialVsockNoListener(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, vsockGuest(kernel))
	// The device answers first (a dial to the port the guest listens on): on a loaded host
	// the fake can take seconds to serve its first connection (2 s were not enough, once,
	// in a full race run on 2 CPUs), and the deadline below must end the wait for a
	// listener, not that.
	long, cancelLong := context.WithTimeout(context.Background(), waitLong)
	defer cancelLong()
	c, err := m.DialVsock(long, 52)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err = m.DialVsock(ctx, 53)
	if !errors.Is(err, ErrNoVsockListener) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial a port nobody listens on: %v, want ErrNoVsockListener and DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "nobody listened on port 53") {
		t.Errorf("error %q does not say that nobody listened on port 53", err)
	}
	t.Logf("error: %v", err)
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("dial took %v after its ctx ended", d)
	}
}

func TestDialVsockRefusals(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	plain := start(t, mgr, guestSpec(kernel, testguest.ModeCAD))
	if _, err := plain.DialVsock(ctx, 52); !errors.Is(err, ErrNoVsock) {
		t.Errorf("dial without a vsock device: %v, want ErrNoVsock", err)
	}
	if _, err := plain.ListenVsock(52); !errors.Is(err, ErrNoVsock) {
		t.Errorf("listen without a vsock device: %v, want ErrNoVsock", err)
	}

	spec := vsockGuest(kernel)
	spec.Name = "paused"
	m := start(t, mgr, spec)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := m.DialVsock(ctx, 52); !errors.Is(err, ErrPaused) {
		t.Errorf("dial into a paused vm: %v, want ErrPaused", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("dial into a paused vm took %v", d)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := m.DialVsock(ctx, 52)
	if err != nil {
		t.Fatalf("dial after resume: %v", err)
	}
	c.Close()

	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.DialVsock(ctx, 52); !errors.Is(err, ErrNotRunning) {
		t.Errorf("dial after the vm ended: %v, want ErrNotRunning", err)
	}
	if _, err := m.ListenVsock(52); !errors.Is(err, ErrNotRunning) {
		t.Errorf("listen after the vm ended: %v, want ErrNotRunning", err)
	}
}

// TestDialVsockNoAnswer dials a guest without a vsock driver: Firecracker never reads the
// request, and the dial ends with its ctx, saying the guest did not answer.
func TestDialVsockNoAnswer(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	spec := guestSpec(kernel, testguest.ModeCAD)
	spec.Vsock = &VsockSpec{CID: 3}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := m.DialVsock(ctx, 52)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoVsockListener) || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("dial a guest without a driver: %v", err)
	}
}

// answerConnect serves one connection on a new Unix socket as a vsock device would: it
// reads the request, checks it, writes reply and closes. It returns the socket's path and
// the server's error.
func answerConnect(t *testing.T, wantRequest, reply string) (string, <-chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			served <- err
			return
		}
		if got := string(buf[:n]); got != wantRequest {
			served <- fmt.Errorf("request %q, want %q", got, wantRequest)
			return
		}
		_, err = io.WriteString(c, reply)
		served <- err
	}()
	return sock, served
}

// TestDialVsockKeepsEarlyBytes checks that bytes the guest sends right behind the OK line
// reach the caller.
func TestDialVsockKeepsEarlyBytes(t *testing.T) {
	sock, served := answerConnect(t, "CONNECT 1234\n", "OK 1073741824\ngreetings from the guest")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := dialVsockOnce(ctx, sock, 1234)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "greetings from the guest" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, ok := c.(*net.UnixConn); !ok {
		t.Errorf("conn is a %T, want *net.UnixConn (for CloseWrite)", c)
	}
}

func TestDialVsockBadAnswer(t *testing.T) {
	sock, served := answerConnect(t, "CONNECT 1\n", "HELLO\n")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := dialVsockOnce(ctx, sock, 1); err == nil || !strings.Contains(err.Error(), `unexpected answer to CONNECT: "HELLO"`) {
		t.Fatalf("bad answer: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

func TestListenVsock(t *testing.T) {
	for _, outside := range []bool{false, true} {
		t.Run(map[bool]string{false: "socket in the vm's directory", true: "socket elsewhere"}[outside], func(t *testing.T) {
			testListenVsock(t, outside)
		})
	}
}

func testListenVsock(t *testing.T, outside bool) {
	mgr, _, kernel := fakeSetup(t)
	spec := vsockGuest(kernel)
	if outside {
		spec.Vsock.Path = filepath.Join(t.TempDir(), "v.sock")
	}
	m := start(t, mgr, spec)
	ln, err := m.ListenVsock(testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := m.VsockSocket()
	path := sock + "_52"
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("listener socket: %v, %v", fi, err)
	}
	if _, err := m.ListenVsock(testguest.VsockEchoPort); !errors.Is(err, ErrExists) {
		t.Errorf("second listener on the port: %v, want ErrExists", err)
	}
	// The guest calls the host on port 52 and echoes what it gets.
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "from the host's listener")
	c.Close()
	// The guest calls again after the connection ends.
	c, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "again")
	c.Close()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}

	// A listener open when the vm ends is closed, and its socket removed.
	ln, err = m.ListenVsock(testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after the vm ended: %v, want net.ErrClosed", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after the vm ended: %v", err)
	}
}

// TestVsockListenerReaped leaves a listener's socket behind, as a process that died would,
// and checks that reaping removes it with the vm.
func TestVsockListenerReaped(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "v.sock")
	for _, name := range []string{"v.sock_52", "v.sock_7", "v.sock_x", "other_52"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
	}
	live, err := net.Listen("unix", sock+"_9")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := removeStaleVsockSockets(sock); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if strings.Join(left, " ") != "other_52 v.sock_9 v.sock_x" {
		t.Errorf("left %v, want other_52, the live v.sock_9 and v.sock_x", left)
	}
}

func TestDialVsockAfterRestore(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	spec := vsockGuest(kernel)
	spec.Name = "vsnap"
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := m.DialVsock(ctx, testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c, "before")
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := mgr.Restore(ctx, snap, RestoreSpec{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err = r.DialVsock(ctx, testguest.VsockEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkEcho(t, c, "after the restore")
}

func TestFreeVsockCID(t *testing.T) {
	mgr, _, kernel := fakeSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if cid, err := mgr.FreeVsockCID(ctx); err != nil || cid != 3 {
		t.Fatalf("FreeVsockCID in an empty root = %d, %v; want 3", cid, err)
	}
	for _, cid := range []uint32{3, 5} {
		spec := vsockGuest(kernel)
		spec.Name = fmt.Sprintf("cid%d", cid)
		spec.Vsock.CID = cid
		start(t, mgr, spec)
	}
	plain := guestSpec(kernel, testguest.ModeHalt)
	plain.Name = "plain"
	if m := start(t, mgr, plain); m.Info().VsockSocket != "" {
		t.Errorf("vsock socket of a vm without vsock: %q", m.Info().VsockSocket)
	}
	if cid, err := mgr.FreeVsockCID(ctx); err != nil || cid != 4 {
		t.Fatalf("FreeVsockCID with 3 and 5 taken = %d, %v; want 4", cid, err)
	}
	infos, err := mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		want := ""
		if info.Spec.Vsock != nil {
			want = filepath.Join(info.RuntimeDir, "vsock.sock")
		}
		if info.VsockSocket != want {
			t.Errorf("vm %s: listed vsock socket %q, want %q", info.Name, info.VsockSocket, want)
		}
	}
}

// TestDialVsockForward dials a guest port that the fake relays to a program on the host, as
// a guest agent would listen: its greeting, sent right behind the OK, arrives whole, and a
// relayed port whose program is gone is turned down.
func TestDialVsockForward(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "agent.sock")
	t.Setenv(fakefc.EnvVsockForward, "1024="+agent)
	ln, err := net.Listen("unix", agent)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "agent ready\n")
		io.Copy(c, c)
	}()
	mgr, _, kernel := fakeSetup(t)
	m := start(t, mgr, vsockGuest(kernel))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := m.DialVsock(ctx, 1024)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(waitLong))
	greeting := make([]byte, len("agent ready\n"))
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "agent ready\n" {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	checkEcho(t, c, "to the agent")
	c.Close()
	<-served
	ln.Close()

	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := m.DialVsock(short, 1024); !errors.Is(err, ErrNoVsockListener) {
		t.Fatalf("dial a relayed port whose program is gone: %v, want ErrNoVsockListener", err)
	}
}
