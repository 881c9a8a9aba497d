package fakefc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// JailerMain runs the fake as Firecracker's jailer: args are its command line without the
// program name. It checks the arguments as the jailer does, builds the chroot
// <base>/<exec name>/<id>/root (the exec file hard-linked, or copied across filesystems,
// into it; /dev with its device nodes and /run, mode 0700, owned by the jail's uid), applies
// the rlimits, joins --netns, and runs the exec file with the jailer's arguments and those
// after "--": in place, or with --new-pid-ns as PID 1 of a new PID namespace (the jailer then
// writes its pid and exits 0). The pid goes to <chroot>/<exec name>.pid either way. The fake
// firecracker enters the chroot and drops to the uid and gid itself (EnvJailRoot). Like the
// real jailer it needs root. It writes nothing to the host's cgroups: the --cgroup settings
// are checked and recorded in FakeJailerFile, as is the rest of the command line. Errors
// end it as the jailer's do: a "Jailer error" panic (SIGABRT).
func JailerMain(argv []string) int {
	rel, err := loadRelease(os.Getenv(EnvVersion))
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake jailer: %v (set %s to a supported release)\n", err, EnvVersion)
		return exitUsage
	}
	switch {
	case len(argv) > 0 && argv[0] == "--version":
		fmt.Printf("Jailer v%s\n\n", rel.version)
		return 0
	}
	c, err := parseJailerArgs(rel, argv)
	if err == nil {
		err = runJail(c)
	}
	// Reached only on failure: success execs firecracker or exits.
	fmt.Fprintf(os.Stderr, "thread 'main' panicked at src/jailer/src/main.rs:379:27:\nJailer error: %v\n", err)
	abort()
	return 134
}

func runJail(c *JailerConfig) error {
	start := time.Now()
	if os.Geteuid() != 0 {
		return jailerError("Failed to chroot: Operation not permitted (os error 1): the jailer runs as root")
	}
	chroot := c.Chroot()
	if err := os.MkdirAll(chroot, 0o700); err != nil {
		return jailerError(fmt.Sprintf("Failed to create directory %s: %s", chroot, osError(err)))
	}
	rec, _ := json.MarshalIndent(c, "", "  ")
	if err := os.WriteFile(filepath.Join(filepath.Dir(chroot), FakeJailerFile), rec, 0o600); err != nil {
		return jailerError("Failed to write the fake jailer's record: " + osError(err))
	}
	name := filepath.Base(c.ExecFile)
	exe := filepath.Join(chroot, name)
	if err := linkOrCopy(c.ExecFile, exe); err != nil {
		return jailerError(fmt.Sprintf("Failed to copy %s to %s: %s", c.ExecFile, exe, osError(err)))
	}
	nofile := unix.Rlimit{Cur: c.NoFile, Max: c.NoFile}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		return jailerError("Failed to set rlimit no-file: " + osError(err))
	}
	if c.FSize != 0 {
		fsize := unix.Rlimit{Cur: c.FSize, Max: c.FSize}
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &fsize); err != nil {
			return jailerError("Failed to set rlimit fsize: " + osError(err))
		}
	}
	if err := buildJail(chroot, c.UID, c.GID); err != nil {
		return err
	}
	// From here the thread that joins the network namespace is the one that forks or execs.
	runtime.LockOSThread()
	if c.NetNS != "" {
		f, err := os.Open(c.NetNS)
		if err != nil {
			return jailerError(fmt.Sprintf("Failed to open netns %s: %s", c.NetNS, osError(err)))
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			return jailerError("Failed to join network namespace: " + osError(err))
		}
		f.Close()
	}
	if c.Daemonize {
		if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
			for fd := range 3 {
				unix.Dup2(int(null.Fd()), fd)
			}
			null.Close()
		}
	}
	us := strconv.FormatInt(start.UnixMicro(), 10)
	args := append([]string{exe, "--id", c.ID, "--start-time-us", us, "--start-time-cpu-us", "0", "--parent-cpu-time-us",
		strconv.FormatInt(time.Since(start).Microseconds(), 10)}, c.Args...)
	env := []string{EnvJailRoot + "=" + chroot, EnvJailUID + "=" + strconv.FormatUint(uint64(c.UID), 10),
		EnvJailGID + "=" + strconv.FormatUint(uint64(c.GID), 10)}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SMARTVM_FAKEFC_") || strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv) // the fake's own knobs; the real jailer clears everything
		}
	}
	pidFile := filepath.Join(chroot, name+".pid")
	if c.NewPIDNS {
		cmd := exec.Command(exe)
		cmd.Args, cmd.Env = args, env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		// As the real jailer (seen with v1.7.0): the clone starts a session only with
		// --daemonize; otherwise it stays in the jailer's.
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID, Setsid: c.Daemonize}
		if err := cmd.Start(); err != nil {
			return jailerError("Failed to exec into new pid namespace: " + osError(err))
		}
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			return jailerError("Failed to write pid file: " + osError(err))
		}
		os.Exit(0)
	}
	if c.Daemonize {
		unix.Setsid()
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return jailerError("Failed to write pid file: " + osError(err))
	}
	return jailerError("Failed to exec into Firecracker: " + osError(syscall.Exec(exe, args, env)))
}

// buildJail makes the jail's folders and device nodes, owned by uid:gid, as the jailer does
// after its pivot_root (here from outside).
func buildJail(chroot string, uid, gid uint32) error {
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		p := filepath.Join(chroot, d)
		if err := os.MkdirAll(p, 0o700); err == nil {
			err = os.Chmod(p, 0o700)
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return jailerError(fmt.Sprintf("Failed to change owner for %s: %s", p, osError(err)))
		}
	}
	for _, n := range []struct {
		path         string
		major, minor uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}, {"dev/urandom", 1, 9}, {"dev/userfaultfd", 0, 0}} {
		if n.path == "dev/userfaultfd" {
			// A misc device with a minor of its own on each host: the host's node's.
			var st unix.Stat_t
			if err := unix.Stat("/dev/userfaultfd", &st); err != nil {
				continue
			}
			n.major, n.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		}
		p := filepath.Join(chroot, n.path)
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor))); err != nil && !errors.Is(err, os.ErrExist) {
			return jailerError(fmt.Sprintf("Failed to create %s via mknod inside the jail: %s", p, osError(err)))
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return jailerError(fmt.Sprintf("Failed to change owner for %s: %s", p, osError(err)))
		}
	}
	return nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// enterJail runs first in the fake firecracker: with EnvJailRoot set by the fake jailer, it
// chroots there and drops to the jail's gid and uid, with no supplementary groups.
func enterJail() error {
	root := os.Getenv(EnvJailRoot)
	if root == "" {
		return nil
	}
	uid, err1 := strconv.Atoi(os.Getenv(EnvJailUID))
	gid, err2 := strconv.Atoi(os.Getenv(EnvJailGID))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("fake jail: uid/gid: %w", err)
	}
	for _, k := range []string{EnvJailRoot, EnvJailUID, EnvJailGID} {
		os.Unsetenv(k)
	}
	if err := syscall.Chroot(root); err != nil {
		return fmt.Errorf("fake jail: chroot %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("fake jail: %w", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("fake jail: setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("fake jail: setgid: %w", err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("fake jail: setuid: %w", err)
	}
	return nil
}
