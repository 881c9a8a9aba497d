package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

// setupNetwork applies a static ip= from the kernel command line: loopback up, the address,
// netmask and default route on the device (unless the kernel already did), the hostname, and
// /etc/resolv.conf from its DNS servers.
func setupNetwork(log *slog.Logger, cmdline string) {
	if err := ifUp("lo", nil, nil); err != nil {
		log.Warn("bring up lo", "err", err)
	}
	c, ok := parseIPArg(kernelArg(cmdline, "ip"))
	if !ok {
		return
	}
	if c.hostname != "" {
		setHostname(log, c.hostname)
	}
	if err := ifUp(c.dev, c.addr, c.mask); err != nil {
		log.Warn("configure network", "dev", c.dev, "err", err)
		return
	}
	if c.gateway != nil {
		if err := addDefaultRoute(c.gateway); err != nil && !errors.Is(err, unix.EEXIST) {
			log.Warn("default route", "gateway", c.gateway, "err", err)
		}
	}
	if len(c.dns) > 0 {
		var b strings.Builder
		for _, d := range c.dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			log.Warn("write /etc/resolv.conf", "err", err)
		}
	}
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
		fmt.Fprintf(os.Stderr, "smartvm-agent: entrypoint %s: %s\n", cmd.argv[0], err)
		if errors.Is(err, syscall.ENOENT) {
			return 127
		}
		return 126
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
