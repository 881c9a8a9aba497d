package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/testutil"
)

// TestResetListensAgain plays a snapshot's transport reset on the agent's connection to the
// host: the agent opens its listeners again, connects again and says it is ready again.
func TestResetListensAgain(t *testing.T) {
	dir := t.TempDir()
	hostLn, err := net.Listen("unix", filepath.Join(dir, "host.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	sock := filepath.Join(dir, "agent.sock")
	var logs testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Listen: []string{"unix:" + sock}, Announce: "unix:" + hostLn.Addr().String(), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	accept := func() net.Conn {
		t.Helper()
		_ = hostLn.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := hostLn.Accept()
		if err != nil {
			t.Fatalf("accept the agent's announcement: %v", err)
		}
		return c
	}
	// First connection: wait for the hello to arrive, then close with it unread, which
	// resets the agent's side (ECONNRESET), as a vsock transport reset does.
	first := accept()
	rc, err := first.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK)
		return err != unix.EAGAIN
	}); err != nil {
		t.Fatal(err)
	}
	first.Close()

	second := accept()
	defer second.Close()
	_ = second.SetDeadline(time.Now().Add(10 * time.Second))
	var h agentwire.Hello
	line, err := bufio.NewReader(second).ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &h) != nil || h.Event != "ready" {
		t.Fatalf("after the reset: %q, %v; want a ready announcement", line, err)
	}
	// The listener was opened again and serves.
	dial, _ := agentwire.ParseAddr("unix:" + sock)
	c := agentwire.NewClient(dial)
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		hctx, hcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Health(hctx)
		hcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not serve after the reset: %v", err)
		}
	}
	for _, want := range []string{"transport reset", "listener ended; listening again"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the agent's log does not say %q:\n%s", want, logs.String())
		}
	}
}
