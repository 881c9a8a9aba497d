package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace that a test created and entered with EnterNetns.
type Netns struct {
	// File is the namespace, open until the test ends.
	File *os.File
	// Path opens the namespace while the test runs ("/proc/self/fd/<n>").
	Path string
}

// EnterNetns locks the calling goroutine (the test's own) to its OS thread and moves the
// thread into a new network namespace, with its loopback device up, until the test ends:
// devices, routes, firewall rules and processes the test creates from that goroutine live
// there, and nothing reaches the host's namespace. Other goroutines can enter it with Path.
//
// When the test ends, EnterNetns moves the thread back and, unless hostPrefix is empty, fails
// the test if the original namespace gained a network device whose name starts with
// hostPrefix. Cleanups registered after EnterNetns run first, still inside the namespace. It
// skips the test when not root, or when the kernel cannot create a namespace.
func EnterNetns(t testing.TB, hostPrefix string) *Netns {
	t.Helper()
	RequiresRoot(t)
	var before []string
	if hostPrefix != "" {
		before = LinksWithPrefix(t, hostPrefix)
	}
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open the current network namespace: %v", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace: %v", err)
	}
	ns := &Netns{}
	t.Cleanup(func() {
		if ns.File != nil {
			ns.File.Close()
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and is discarded when the test's goroutine ends.
			t.Errorf("return to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
		orig.Close()
		if hostPrefix == "" {
			return
		}
		for _, l := range LinksWithPrefix(t, hostPrefix) {
			if !slices.Contains(before, l) {
				t.Errorf("the host's network namespace gained the device %s", l)
			}
		}
	})
	if ns.File, err = os.Open("/proc/thread-self/ns/net"); err != nil {
		t.Fatalf("open the test's network namespace: %v", err)
	}
	ns.Path = fmt.Sprintf("/proc/self/fd/%d", ns.File.Fd())
	if err := setLoopbackUp(); err != nil {
		t.Fatalf("set lo up in the test's network namespace: %v", err)
	}
	return ns
}

// setLoopbackUp brings up lo in the calling thread's network namespace.
func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// LinksWithPrefix lists the network devices whose names start with prefix in the network
// namespace of the calling thread.
func LinksWithPrefix(t testing.TB, prefix string) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatalf("list network devices: %v", err)
	}
	var names []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, prefix) {
			names = append(names, i.Name)
		}
	}
	return names
}

// The stand-in uplink that AddUplink creates.
const (
	UplinkName = "upl0"
	UplinkAddr = "10.99.0.1/24"
)

// AddUplink adds a stand-in for the host's uplink to the network namespace of the calling
// thread, so NAT has a default route to masquerade through: "upl0" (10.99.0.1/24), one end of
// a veth pair whose other end stays in the same namespace, so nothing sent to it leaves the
// namespace, with the default route via 10.99.0.254. It also brings lo up. It runs the ip
// command (iproute2) and wraps errors.ErrUnsupported when the kernel cannot make veth devices.
func AddUplink() error {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", UplinkName, "type", "veth", "peer", "name", UplinkName + "peer"},
		{"link", "set", UplinkName + "peer", "up"},
		{"addr", "add", UplinkAddr, "dev", UplinkName},
		{"link", "set", UplinkName, "up"},
		{"route", "add", "default", "via", "10.99.0.254"},
	} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err == nil {
			continue
		}
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "not supported") {
			return fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), msg, errors.ErrUnsupported)
		}
		return fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), msg, err)
	}
	return nil
}

// NeedUplink is AddUplink for a test: it skips the test when the kernel cannot make veth
// devices and fails it on other errors.
func NeedUplink(t testing.TB) {
	t.Helper()
	if err := AddUplink(); errors.Is(err, errors.ErrUnsupported) {
		t.Skipf("the kernel cannot make veth devices: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
}
