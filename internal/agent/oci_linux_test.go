package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/agentwire"
	"github.com/smartvm/smartvm/internal/stage"
	"github.com/smartvm/smartvm/internal/testutil"
)

// ociBootMain is the test binary run as "agent-ociboot DEV DIR CMDLINE ARGS...": PID 1 of
// new PID, mount, UTS and network namespaces, it does what the kernel does for a guest booted
// from an OCI image's ext4: it mounts the ext4 on the block device DEV read-write at DIR (in
// its own mount namespace, so the host never sees it), enters it and executes the installed
// agent as PID 1, with the kernel's environment for init. The agent finds /proc mounted, with
// the content of the file CMDLINE as the kernel command line.
func ociBootMain(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: agent-ociboot DEV DIR CMDLINE [AGENT-ARGS...]")
		return 2
	}
	dev, dir, cmdline := args[0], args[1], args[2]
	err := enterRoot(dir, func() error {
		if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", dev, err)
		}
		proc := filepath.Join(dir, "proc")
		if err := os.Mkdir(proc, 0o555); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
		if err := unix.Mount(cmdline, filepath.Join(proc, "cmdline"), "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mount the kernel command line: %w", err)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	argv := append([]string{baseimage.AgentPath}, args[3:]...)
	err = unix.Exec(baseimage.AgentPath, argv, []string{"HOME=/", "TERM=linux"})
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", baseimage.AgentPath, err)
	return 1
}

// ociTestImage is the image TestOCIImageAsPID1 pulls: busybox (with a hard link and an
// absolute symlink to it in /usr/bin), an os-release, a user "app" (uid 1000), set-id files, owners, and whiteouts in the second layer (a deleted file and an
// opaque directory), with a config that sets every field the main process uses.
func ociTestImage(t *testing.T) (cfg v1.Config, layers [][]testutil.OCIEntry) {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	dir := func(name string, mode int64, id int) testutil.OCIEntry {
		return testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: id, Gid: id}}
	}
	file := func(name, body string, mode int64, uid, gid int) testutil.OCIEntry {
		return testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid}, Body: body}
	}
	base := []testutil.OCIEntry{
		dir("bin/", 0o755, 0), file("bin/busybox", string(bb), 0o755, 0, 0),
	}
	for _, applet := range busyboxApplets(t) {
		base = append(base, testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}})
	}
	base = append(base,
		dir("etc/", 0o755, 0),
		file("etc/os-release", "ID=smartvm-oci-e2e\nNAME=\"OCI end to end\"\n", 0o644, 0, 0),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644, 0, 0),
		file("etc/group", "root:x:0:\napp:x:1000:\n", 0o644, 0, 0),
		file("etc/doomed", "deleted by the second layer\n", 0o644, 0, 0),
		dir("root/", 0o700, 0), dir("tmp/", 0o1777, 0),
		dir("home/", 0o755, 0), dir("home/app/", 0o700, 1000),
		dir("usr/", 0o755, 0), dir("usr/bin/", 0o755, 0),
		// A hard link and an absolute symlink to busybox, as applets.
		testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/printf", Linkname: "bin/busybox"}},
		testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/env", Linkname: "/bin/busybox", Mode: 0o777}},
		file("usr/bin/suid-tool", "#!/bin/sh\nid -u\n", 0o4755, 0, 0),
		file("usr/bin/sgid-tool", "#!/bin/sh\nid -g\n", 0o2750, 0, 1000),
		dir("opt/", 0o755, 0), dir("opt/keep/", 0o755, 0),
		file("opt/keep/old", "hidden by the opaque directory\n", 0o644, 0, 0),
		dir("app/", 0o750, 1000), file("app/data", "layer 1", 0o640, 1000, 1000),
		dir("var/", 0o755, 0), dir("var/cache/", 0o755, 0), dir("var/cache/old/", 0o755, 0),
		file("var/cache/old/x", "a directory deleted by the second layer", 0o644, 0, 0),
		file("var/file-then-dir", "a file the second layer replaces with a directory", 0o644, 0, 0),
		dir("var/dir-then-file/", 0o755, 0), file("var/dir-then-file/x", "replaced", 0o644, 0, 0),
		file("var/big-ids", "", 0o644, 100000, 200000),
		testutil.OCIEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: "var/dated", Mode: 0o644, ModTime: time.Unix(1600000000, 0)}},
	)
	top := []testutil.OCIEntry{
		dir("etc/", 0o755, 0), file("etc/.wh.doomed", "", 0o644, 0, 0),
		dir("opt/keep/", 0o755, 0), file("opt/keep/.wh..wh..opq", "", 0o644, 0, 0),
		file("opt/keep/new", "layer 2\n", 0o644, 0, 0),
		file("app/data", "layer 2", 0o600, 1000, 1000),
		file("var/cache/.wh.old", "", 0o644, 0, 0),
		dir("var/file-then-dir/", 0o711, 0), file("var/file-then-dir/a", "a", 0o644, 0, 0),
		file("var/dir-then-file", "now a file", 0o644, 0, 0),
		file("srv/implicit/file", "its directories have no entries", 0o644, 0, 0),
	}
	cfg = v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{`cat /etc/os-release; echo "$GREETING/$LANG in $PWD as $(id -u):$(id -g) with $(cat data)"; exit 7`},
		Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello", "LANG=C.UTF-8"},
		WorkingDir: "/app",
		User:       "app",
	}
	return cfg, [][]testutil.OCIEntry{base, top}
}

// TestOCIImageAsPID1 runs what smartvm ships for an OCI image, end to end short of a kernel:
// it pulls an image from a registry and converts it with baseimage.Manager and the real
// static agent, then boots a staged copy of the ext4 as a guest would (loop device, mounted
// read-write as the root of new namespaces) with the installed agent as PID 1 waiting for its
// main process (smartvm.main=wait on its kernel command line). Over the agent's socket it
// checks the file tree (owners, modes, set-id bits, times, links, whiteouts), then starts the
// main process: the image's entrypoint and cmd with its env, working directory and user, or
// with run's overrides (cmd, env, a new working directory, entrypoint, a numeric user, a
// terminal), and checks their output and exit codes, and a stop by Ctrl-Alt-Del. Each boot
// ends with the agent powering off, leaving no mount, loop device or process.
func TestOCIImageAsPID1(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.CheckLeaks(t)
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install e2fsprogs mount): %v", tool, err)
		}
	}
	cfg, layers := ociTestImage(t)
	agentBin := buildAgent(t)
	ref := testutil.OCIRegistry(t, nil) + "/e2e:1"
	testutil.PushOCILayers(t, ref, cfg, layers...)

	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("not booted here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := baseimage.New(baseimage.Options{
		Dir: filepath.Join(dir, "cache"), Kernel: kernel, AgentBinary: agentBin,
		RootfsSizeMiB: 64, RootfsHeadroomMiB: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	b, err := m.Pull(ctx, baseimage.Source{OCI: ref})
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}

	t.Run("image config", func(t *testing.T) {
		g := bootOCI(t, b)
		// Before the main process: the tree as the layers made it.
		out := g.exec(t, `stat -c '%n %h' /bin/busybox /usr/bin/printf; readlink /usr/bin/env
stat -c '%n %a %u %g %U %G' /usr/bin/suid-tool /usr/bin/sgid-tool /app /app/data /home/app /tmp `+baseimage.AgentPath+` `+baseimage.InitConfigPath+`
stat -c '%n %a %u %g' /var/file-then-dir /var/dir-then-file /var/big-ids /srv /srv/implicit; stat -c '%n %Y' /var/dated
cat /var/file-then-dir/a /var/dir-then-file; echo
for f in /etc/doomed /etc/.wh.doomed /opt/keep/old /opt/keep/.wh..wh..opq /var/cache/old /var/cache/.wh.old; do [ -e $f ] && echo "present: $f"; done
ls /opt/keep; cat /app/data; echo; readlink /proc/1/exe; cat /proc/cmdline`)
		want := "/bin/busybox 2\n/usr/bin/printf 2\n/bin/busybox\n" +
			"/usr/bin/suid-tool 4755 0 0 root root\n" +
			"/usr/bin/sgid-tool 2750 0 1000 root app\n" +
			"/app 750 1000 1000 app app\n" +
			"/app/data 600 1000 1000 app app\n" +
			"/home/app 700 1000 1000 app app\n" +
			"/tmp 1777 0 0 root root\n" +
			baseimage.AgentPath + " 755 0 0 root root\n" +
			baseimage.InitConfigPath + " 644 0 0 root root\n" +
			"/var/file-then-dir 711 0 0\n/var/dir-then-file 644 0 0\n/var/big-ids 644 100000 200000\n" +
			"/srv 755 0 0\n/srv/implicit 755 0 0\n/var/dated 1600000000\n" +
			"anow a file\n" +
			"new\nlayer 2\n" +
			baseimage.AgentPath + "\n" +
			b.BootArgs + " " + agentwire.MainWaitArg + "\n"
		if out != want {
			t.Errorf("the guest's tree:\n%s\nwant\n%s", out, want)
		}
		var stdout, stderr bytes.Buffer
		st := g.main(t, agentwire.MainStart{}, &stdout, &stderr)
		want = "ID=smartvm-oci-e2e\nNAME=\"OCI end to end\"\nhello/C.UTF-8 in /app as 1000:1000 with layer 2\n"
		if st.Code != 7 || stdout.String() != want || stderr.Len() != 0 {
			t.Errorf("main process: %+v, stdout %q, stderr %q; want code 7 and stdout %q", st, stdout.String(), stderr.String(), want)
		}
		g.powerOff(t)
	})

	t.Run("overrides", func(t *testing.T) {
		g := bootOCI(t, b)
		var stdout, stderr bytes.Buffer
		st := g.main(t, agentwire.MainStart{
			Cmd: []string{`echo "$GREETING $EXTRA/$LANG in $PWD as $(id -un)"; env | sort >&2; exit 4`},
			Env: []string{"GREETING=hi", "EXTRA=there"},
			Dir: "/srv/work", // not in the image: made, as docker run -w does
		}, &stdout, &stderr)
		// The image's env with the overrides, HOME from the image's passwd, and what sh adds;
		// nothing of the agent's own environment.
		env := "EXTRA=there\nGREETING=hi\nHOME=/home/app\nLANG=C.UTF-8\nPATH=/usr/bin:/bin\nPWD=/srv/work\nSHLVL=1\n"
		if want := "hi there/C.UTF-8 in /srv/work as app\n"; st.Code != 4 || stdout.String() != want || stderr.String() != env {
			t.Errorf("main process: %+v, stdout %q, stderr %q; want code 4, stdout %q and the environment %q", st, stdout.String(), stderr.String(), want, env)
		}
		g.powerOff(t)
	})

	t.Run("entrypoint, numeric user and a terminal", func(t *testing.T) {
		g := bootOCI(t, b)
		// The image's working directory is app's alone.
		_, _, st := g.run(t, agentwire.ExecStart{Args: []string{"true"}, Dir: "/app", User: "4242:4343"}, "")
		if st.Code != 126 || !strings.Contains(st.Error, "permission denied (as user 4242:4343 in /app: the working directory") {
			t.Errorf("exec as another user in /app: %+v, want code 126 naming the user and the directory", st)
		}
		var stdout, stderr bytes.Buffer
		st = g.main(t, agentwire.MainStart{
			Entrypoint: &[]string{"env"},
			Cmd:        []string{"sh", "-c", `printf '%s %s:%s %s %s\n' "$(tty)" "$(id -u)" "$(id -g)" "$HOME" "$PWD"; exit 9`},
			User:       "4242:4343",
			Dir:        "/tmp",
			TTY:        true,
		}, &stdout, &stderr)
		if want := "/dev/pts/0 4242:4343 / /tmp\r\n"; st.Code != 9 || stdout.String() != want || stderr.Len() != 0 {
			t.Errorf("main process: %+v, output %q, stderr %q; want code 9 and output %q", st, stdout.String(), stderr.String(), want)
		}
		g.powerOff(t)
	})

	t.Run("ctrl-alt-del", func(t *testing.T) {
		g := bootOCI(t, b)
		out := newLineWriter()
		p := g.startMain(t, agentwire.MainStart{
			Cmd: []string{`trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done`},
		}, out, out)
		out.waitFor(t, "ready")
		// Firecracker's SendCtrlAltDel: with Ctrl-Alt-Del off, the kernel sends PID 1 SIGINT.
		if err := g.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		// The agent signals the main process's group: the shell may say its sleep was Terminated.
		if st := g.wait(t, p); st.Code != 3 || !strings.Contains(out.String(), "got TERM\n") {
			t.Errorf("main process: %+v, output %q; want code 3 after the TERM trap", st, out.String())
		}
		g.powerOff(t)
	})

	if err := m.Remove(ctx, b.ID); err != nil {
		t.Error(err)
	}
}

// ociGuest is a staged copy of an OCI image's ext4 booted with its agent as PID 1.
type ociGuest struct {
	*nsAgent
	disk, loop, mnt string
	detached        bool
}

// bootOCI stages a copy of b's rootfs, attaches it to a loop device and boots it with b's
// boot args and smartvm.main=wait, as smartvm does for an OCI image: the installed agent runs
// as PID 1 and answers on /agent.sock in the guest. The cleanup kills it and detaches the loop
// device.
func bootOCI(t *testing.T, b *baseimage.Bundle) *ociGuest {
	t.Helper()
	dir := t.TempDir()
	g := &ociGuest{disk: filepath.Join(dir, "rootfs.ext4"), mnt: filepath.Join(dir, "mnt")}
	if _, err := stage.Copy(t.Context(), b.Rootfs, g.disk); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(g.mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte(b.BootArgs+" "+agentwire.MainWaitArg+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", g.disk).Output()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v", g.disk, err)
	}
	g.loop = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if !g.detached {
			if out, err := exec.Command("losetup", "-d", g.loop).CombinedOutput(); err != nil {
				t.Errorf("losetup -d %s: %v: %s", g.loop, err, out)
			}
		}
	})
	argv := []string{g.loop, g.mnt, cmdline, "--listen", "unix:/agent.sock", "--announce", "none", "--log-level", "debug"}
	g.nsAgent = startNS(t, "agent-ociboot", argv, func(pid int) string { return fmt.Sprintf("/proc/%d/root/agent.sock", pid) })
	return g
}

// exec runs script with sh as root in the guest and returns its stdout; it fails the test
// unless the script exits 0 without writing to stderr.
func (g *ociGuest) exec(t *testing.T, script string) string {
	t.Helper()
	stdout, stderr, st := g.run(t, agentwire.ExecStart{Args: []string{"sh", "-c", script}}, "")
	if st.Code != 0 || st.Signal != 0 || stderr != "" {
		t.Errorf("%s: %+v, stderr %q", script, st, stderr)
	}
	return stdout
}

// main starts the main process with start and waits for it to end.
func (g *ociGuest) main(t *testing.T, start agentwire.MainStart, stdout, stderr io.Writer) agentwire.ExitStatus {
	t.Helper()
	return g.wait(t, g.startMain(t, start, stdout, stderr))
}

// startMain starts the main process with start.
func (g *ociGuest) startMain(t *testing.T, start agentwire.MainStart, stdout, stderr io.Writer) *agentwire.Process {
	t.Helper()
	p, err := g.client.Main(t.Context(), start, agentwire.ExecIO{Stdout: stdout, Stderr: stderr})
	if err != nil {
		t.Fatalf("Main: %v", err)
	}
	return p
}

// wait waits for the main process p to end.
func (g *ociGuest) wait(t *testing.T, p *agentwire.Process) agentwire.ExitStatus {
	t.Helper()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = g.cmd.Process.Kill() // ends the call
		}
	}()
	st, err := p.Wait()
	if err != nil {
		t.Fatalf("Main: %v", err)
	}
	return st
}

// powerOff waits for the agent to power off after its main process ended, then detaches the
// loop device and checks that nothing of the guest is left: its mount went with its mount
// namespace, and the staged copy is on no loop device.
func (g *ociGuest) powerOff(t *testing.T) {
	t.Helper()
	select {
	case <-g.done:
	case <-time.After(time.Minute):
		t.Fatal("the agent did not power off after the main process ended")
	}
	if ws := g.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGHUP {
		t.Errorf("agent ended with %v, want killed by SIGHUP (reboot in a PID namespace)", g.cmd.ProcessState)
	}
	if out, err := exec.Command("losetup", "-d", g.loop).CombinedOutput(); err != nil {
		t.Errorf("losetup -d %s: %v: %s", g.loop, err, out)
	}
	g.detached = true
	// Detaching a loop device its file system still holds (the dying mount namespace may not
	// have let go yet) is deferred until it does.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		out, err := exec.Command("losetup", "--associated", g.disk).Output()
		if err != nil {
			t.Fatalf("losetup --associated %s: %v", g.disk, err)
		}
		if len(bytes.TrimSpace(out)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the staged rootfs is still on a loop device: %s", out)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), g.mnt) {
		t.Errorf("the guest's mount reached the host:\n%s", mounts)
	}
}
