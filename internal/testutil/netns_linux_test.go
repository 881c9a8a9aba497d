package testutil

import (
	"net"
	"os"
	"testing"
)

func TestEnterNetns(t *testing.T) {
	host, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ns := EnterNetns(t, "smvtest")
	inside, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if inside == host {
		t.Fatalf("still in the host's namespace %s", host)
	}
	if via, err := os.Readlink(ns.Path); err != nil || via != inside {
		t.Errorf("Path %s leads to %s (%v), want %s", ns.Path, via, err, inside)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		t.Errorf("a fresh namespace should hold lo, up; it holds %+v", ifs)
	}
	if got := LinksWithPrefix(t, "l"); len(got) != 1 || got[0] != "lo" {
		t.Errorf("LinksWithPrefix(l) = %v", got)
	}
	// Loopback works: a listener and a connection inside the namespace.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("connect over lo: %v", err)
	}
	c.Close()
}
