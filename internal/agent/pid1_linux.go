package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// mounts are the file systems PID 1 mounts, in order.
var mounts = []struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
}

// setupSystem prepares the guest as init: file systems, /dev links, Ctrl-Alt-Del as a signal.
// Failures are logged: a guest with less set up is still worth serving.
func setupSystem(log *slog.Logger) {
	for _, m := range mounts {
		if isMountPoint(m.target) {
			continue // the kernel or an initramfs did it
		}
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			log.Warn("mount", "target", m.target, "err", err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			log.Warn("mount", "target", m.target, "fstype", m.fstype, "err", err)
		}
	}
	for link, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			_ = os.Symlink(target, link)
		}
	}
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	// Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) becomes SIGINT to PID 1, for a graceful stop.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		log.Debug("ctrl-alt-del as a signal", "err", err)
	}
}

// isMountPoint reports whether p is the root of a mount: its device differs from its parent's.
func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(p, &st) != nil || unix.Stat(p+"/..", &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

func setHostname(log *slog.Logger, name string) {
	if err := unix.Sethostname([]byte(name)); err != nil {
		log.Warn("set hostname", "name", name, "err", err)
	}
}

// ipConfig is the kernel's ip= argument:
// ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>.
type ipConfig struct {
	addr, gateway net.IP
	mask          net.IPMask
	hostname, dev string
	dns           []string
}

func parseIPArg(v string) (ipConfig, bool) {
	f := strings.Split(v, ":")
	for len(f) < 9 {
		f = append(f, "")
	}
	var c ipConfig
	if c.addr = net.ParseIP(f[0]).To4(); c.addr == nil {
		return c, false // "dhcp", "off" and the like: nothing static to apply
	}
	c.gateway = net.ParseIP(f[2]).To4()
	if m := net.ParseIP(f[3]).To4(); m != nil {
		c.mask = net.IPMask(m)
	} else {
		c.mask = c.addr.DefaultMask()
	}
	c.hostname, c.dev = f[4], f[5]
	if c.dev == "" {
		c.dev = "eth0"
	}
	for _, d := range f[7:9] {
		if net.ParseIP(d) != nil {
			c.dns = append(c.dns, d)
		}
	}
	return c, true
}

// guestSys is where network settings outside the interfaces go, and how to reach MMDS; tests
// point it elsewhere.
type guestSys struct {
	resolvConf  string
	sethostname func(name string) error
	dial        dialTCP // nil: net.Dialer
}

var realSys = guestSys{resolvConf: "/etc/resolv.conf", sethostname: func(name string) error { return unix.Sethostname([]byte(name)) }}

// setupNetwork brings up loopback and the guest's network: from a static ip= on the kernel
// command line, else from MMDS (agentwire.MMDSNetwork). keepHostname leaves the host name
// alone (an init config set it).
func setupNetwork(log *slog.Logger, cmdline string, keepHostname bool) {
	if err := ifUp("lo", nil, nil); err != nil {
		log.Warn("bring up lo", "err", err)
	}
	c, ok := parseIPArg(kernelArg(cmdline, "ip"))
	if !ok {
		if err := setupNetworkMMDS(context.Background(), log, cmdline, realSys, keepHostname); err != nil {
			log.Warn("network from mmds", "err", err)
		}
		return
	}
	ones, _ := c.mask.Size()
	addr, _ := netip.AddrFromSlice(c.addr)
	g := guestNet{addr: netip.PrefixFrom(addr, ones), hostname: c.hostname, dev: c.dev}
	if gw, ok := netip.AddrFromSlice(c.gateway); ok {
		g.gateway = gw
	}
	for _, d := range c.dns {
		g.dns = append(g.dns, netip.MustParseAddr(d)) // parseIPArg checked it
	}
	if err := applyNetwork(log, g, realSys, keepHostname); err != nil {
		log.Warn("configure network", "dev", c.dev, "err", err)
	}
}

// setupNetworkMMDS gives eth0 a link-local address, reads the network from MMDS and applies
// it. Without eth0, or with smartvm.mmds=off, it does nothing; without the key, it leaves eth0
// on its link-local address (the metadata service stays reachable).
func setupNetworkMMDS(ctx context.Context, log *slog.Logger, cmdline string, sys guestSys, keepHostname bool) error {
	addr, explicit, err := mmdsAddr(cmdline)
	if err != nil || addr == "" {
		return err
	}
	local := agentwire.MMDSGuestAddr
	if addr == local {
		local = agentwire.MMDSGuestAddrAlt
	}
	if _, err := net.InterfaceByName("eth0"); err != nil {
		log.Debug("no eth0 for mmds", "err", err)
		return nil
	}
	if err := ifUp("eth0", net.ParseIP(local).To4(), net.CIDRMask(16, 32)); err != nil {
		return fmt.Errorf("eth0 for mmds: %w", err)
	}
	// A host that says where MMDS is gets time to answer; otherwise a guest with a NIC and no
	// MMDS waits briefly.
	timeout := 2 * time.Second
	if explicit {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	g, ok, err := newMMDSClient(net.JoinHostPort(addr, "80"), timeout, sys.dial).network(ctx)
	if err != nil || !ok {
		if !explicit && err != nil {
			log.Debug("no network from mmds", "addr", addr, "err", err)
			return nil
		}
		return err
	}
	log.Info("network from mmds", "dev", g.dev, "addr", g.addr, "gateway", g.gateway)
	return applyNetwork(log, g, sys, keepHostname)
}

// applyNetwork sets the address and prefix on the device and brings it up, then the default
// route, /etc/resolv.conf (when DNS servers are given) and the host name.
func applyNetwork(log *slog.Logger, g guestNet, sys guestSys, keepHostname bool) error {
	if g.hostname != "" && !keepHostname {
		if err := sys.sethostname(g.hostname); err != nil {
			log.Warn("set hostname", "name", g.hostname, "err", err)
		}
	}
	if err := ifUp(g.dev, g.addr.Addr().AsSlice(), net.CIDRMask(g.addr.Bits(), 32)); err != nil {
		return fmt.Errorf("%s: %w", g.dev, err)
	}
	if g.gateway.IsValid() {
		if err := addDefaultRoute(g.gateway.AsSlice()); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("default route via %s: %w", g.gateway, err)
		}
	}
	if len(g.dns) > 0 {
		if err := os.WriteFile(sys.resolvConf, g.resolvConf(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ifreq is struct ifreq with a sockaddr_in or flags in its union.
type ifreq struct {
	name [unix.IFNAMSIZ]byte
	data [24]byte
}

func ioctlIfreq(fd int, req uint, ifr *ifreq) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(ifr))); e != 0 {
		return e
	}
	return nil
}

func sockaddrIn(ip net.IP) [24]byte {
	var d [24]byte
	*(*uint16)(unsafe.Pointer(&d[0])) = unix.AF_INET
	copy(d[4:8], ip.To4())
	return d
}

// ifUp sets addr/mask on dev (when addr is not nil) and brings it up.
func ifUp(dev string, addr net.IP, mask net.IPMask) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr ifreq
	copy(ifr.name[:unix.IFNAMSIZ-1], dev)
	if addr != nil {
		ifr.data = sockaddrIn(addr)
		if err := ioctlIfreq(fd, unix.SIOCSIFADDR, &ifr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("set address: %w", err)
		}
		ifr.data = sockaddrIn(net.IP(mask))
		if err := ioctlIfreq(fd, unix.SIOCSIFNETMASK, &ifr); err != nil {
			return fmt.Errorf("set netmask: %w", err)
		}
	}
	ifr.data = [24]byte{}
	if err := ioctlIfreq(fd, unix.SIOCGIFFLAGS, &ifr); err != nil {
		return fmt.Errorf("get flags: %w", err)
	}
	flags := *(*uint16)(unsafe.Pointer(&ifr.data[0])) | unix.IFF_UP
	*(*uint16)(unsafe.Pointer(&ifr.data[0])) = flags
	if err := ioctlIfreq(fd, unix.SIOCSIFFLAGS, &ifr); err != nil {
		return fmt.Errorf("bring up: %w", err)
	}
	return nil
}

// rtentry is struct rtentry of <linux/route.h> on 64-bit Linux.
type rtentry struct {
	pad1    uint64
	dst     [16]byte
	gateway [16]byte
	genmask [16]byte
	flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	metric  int16
	dev     uintptr
	mtu     uint64
	window  uint64
	irtt    uint16
}

func addDefaultRoute(gw net.IP) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var rt rtentry
	d := sockaddrIn(net.IPv4zero)
	copy(rt.dst[:], d[:16])
	copy(rt.genmask[:], d[:16])
	g := sockaddrIn(gw)
	copy(rt.gateway[:], g[:16])
	rt.flags = unix.RTF_UP | unix.RTF_GATEWAY
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&rt))); e != 0 {
		return e
	}
	return nil
}

// runEntrypoint runs the init config's command with the agent's stdio (the console) and
// returns its exit code. SIGINT (Ctrl-Alt-Del) and SIGTERM to PID 1 are passed on to it as
// SIGTERM.
func runEntrypoint(ctx context.Context, log *slog.Logger, procs *reaper, init *InitConfig, cfg Config) int {
	start := &agentwire.ExecStart{Args: init.Args(), Env: init.Env, Dir: init.WorkingDir, User: init.User}
	makeWorkDir(start.Dir)
	cmd, err := resolve(start)
	if err != nil {
		var se *startError
		errors.As(err, &se)
		fmt.Fprintf(os.Stderr, "smartvm-agent: entrypoint: %s\n", err)
		return se.code
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	attr := &syscall.ProcAttr{Dir: cmd.dir, Env: cmd.env, Files: []uintptr{0, 1, 2},
		Sys: &syscall.SysProcAttr{Credential: cmd.cred, Setsid: true}}
	pid, wait, err := procs.start(cmd.path, cmd.argv, attr)
	if err != nil {
		se := cmd.startFailed(cmd.argv[0], start.User, err)
		fmt.Fprintf(os.Stderr, "smartvm-agent: entrypoint %s\n", se)
		return se.code
	}
	log.Info("entrypoint started", "pid", pid, "args", cmd.argv)
	for {
		select {
		case ws := <-wait:
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			log.Info("entrypoint ended", "code", code)
			stopAll(procs)
			return code
		case sig := <-sigs:
			log.Info("stopping the entrypoint", "signal", sig)
			_ = syscall.Kill(-pid, syscall.SIGTERM)
		case <-ctx.Done():
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
}

// stopAll ends every other process before power-off: SIGTERM, up to 2 s, then SIGKILL.
func stopAll(procs *reaper) {
	_ = syscall.Kill(-1, syscall.SIGTERM)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		procs.reapAll()
		if err := syscall.Kill(-1, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-1, syscall.SIGKILL)
	procs.reapAll()
}

// powerOff syncs and ends the machine. Firecracker on x86 has no power-off device: a reboot
// request makes it exit, so that is what the agent asks for there.
func powerOff(log *slog.Logger) {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if runtime.GOARCH == "amd64" {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(cmd); err != nil {
		log.Error("power off", "err", err)
	}
}
