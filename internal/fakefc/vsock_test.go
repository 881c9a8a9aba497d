package fakefc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// vsockAnswer sends request on a new connection to the vsock socket uds and returns the
// connection and what came back within wait: the answer line, "closed", or "no answer".
func (r *run) vsockAnswer(uds, request string, wait time.Duration) (net.Conn, string) {
	r.t.Helper()
	c, err := net.Dial("unix", uds)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, request); err != nil {
		r.t.Fatal(err)
	}
	return c, readAnswer(r, c, wait)
}

// readAnswer reads the answer line from c within wait.
func readAnswer(r *run, c net.Conn, wait time.Duration) string {
	r.t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	var line []byte
	b := make([]byte, 1)
	for {
		_, err := c.Read(b)
		switch {
		case err == nil && b[0] == '\n':
			return string(line)
		case err == nil:
			line = append(line, b[0])
		case errors.Is(err, os.ErrDeadlineExceeded) && len(line) == 0:
			return "no answer"
		case (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) && len(line) == 0:
			return "closed"
		default:
			r.t.Fatalf("read the answer: %v (after %q)", err, line)
		}
	}
}

// echoOK writes msg to c and notes whether it comes back.
func echoOK(r *run, what string, c net.Conn, msg string) {
	r.t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		r.t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	r.note("%s: echo %q, %v", what, got, err)
}

// scVsock drives the vsock device's host side with the vsock-echo guest: nothing answers
// before the guest's driver is up; then CONNECT to port 52 gets OK with host ports from 1<<30
// (allocated for every well-formed request, refused ones included) and echoes; other ports
// and malformed requests are closed; a request to a paused guest is answered once it
// resumes; and the guest calls the host's uds_52, again after each call ends.
func scVsock(r *run) {
	p := r.start("fc")
	uds := r.path("v.sock")
	p.ok("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, uds))
	// Not read before the driver is up (else it would be closed at once); malformed, so that
	// when it is read after the boot it takes no host port.
	early, answer := r.vsockAnswer(uds, "HELLO 52 x\n", 200*time.Millisecond)
	r.note("before boot: %s", answer)
	early.Close()
	p.boot(testguest.ModeVsockEcho)

	c, answer := r.vsockAnswer(uds, "CONNECT 52\n", 10*time.Second)
	r.note("CONNECT 52: %s", answer)
	echoOK(r, "first", c, "ping")
	c2, answer := r.vsockAnswer(uds, "connect 52\n", 10*time.Second)
	r.note("connect 52: %s", answer)
	echoOK(r, "second", c2, "pong")
	echoOK(r, "first again", c, "ping again")
	_, answer = r.vsockAnswer(uds, "CONNECT 53\n", 10*time.Second)
	r.note("CONNECT 53: %s", answer)
	_, answer = r.vsockAnswer(uds, "HELLO 52 x\n", 10*time.Second)
	r.note("HELLO 52 x: %s", answer)

	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	c3, answer := r.vsockAnswer(uds, "CONNECT 52\n", 100*time.Millisecond)
	r.note("paused: %s", answer)
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	r.note("resumed: %s", readAnswer(r, c3, 10*time.Second))
	echoOK(r, "after the resume", c3, "resumed")

	ln, err := net.Listen("unix", uds+"_52")
	if err != nil {
		r.t.Fatal(err)
	}
	defer ln.Close()
	_ = ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	for _, what := range []string{"the guest's call", "its next call"} {
		call, err := ln.Accept()
		if err != nil {
			r.t.Fatalf("%s: %v", what, err)
		}
		echoOK(r, what, call, "hi guest")
		call.Close()
	}
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
}

func TestParseVsockForward(t *testing.T) {
	got, err := ParseVsockForward("1024=/run/a.sock, 52=/tmp/b")
	if err != nil || len(got) != 2 || got[1024] != "/run/a.sock" || got[52] != "/tmp/b" {
		t.Errorf("ParseVsockForward = %v, %v", got, err)
	}
	for _, bad := range []string{"", "1024", "x=/a", "1024=", "-1=/a", "4294967296=/a", "1=/a,,2=/b"} {
		if _, err := ParseVsockForward(bad); err == nil {
			t.Errorf("ParseVsockForward(%q) succeeded", bad)
		}
	}
}
