package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/testguest"
)

// Doctor check statuses.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
)

// check is one line of `smartvm doctor`.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Fix says how to repair a failed or warned check.
	Fix string `json:"fix,omitempty"`
	// DurationMS is how long the hello guest took, from the start request until it ended.
	DurationMS int64 `json:"duration_ms,omitempty"`
}

// doctorReport is `smartvm doctor --json`.
type doctorReport struct {
	OK     bool    `json:"ok"`
	Checks []check `json:"checks"`
}

// Runtime dir free space thresholds: below minRuntimeFree a VM cannot run; below
// lowRuntimeFree a base image's writable root filesystem copy may not fit.
const (
	minRuntimeFree = 64 << 20
	lowRuntimeFree = 2 << 30
)

// helloTimeout bounds the doctor's boot of the hello guest.
const helloTimeout = 60 * time.Second

func (a *app) newDoctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor [--json]",
		Short: "Check that this host can run VMs, then boot the hello guest",
		Long: `Check that this host can run Firecracker VMs: read/write access to /dev/kvm, a
firecracker binary and its version, the jailer (its version, root, the cgroup layout),
/dev/net/tun, the tools that convert base images
(mkfs.ext4, e2fsck, unsquashfs), and the runtime directory (tmpfs, free space). When KVM and
Firecracker are usable it boots the built-in hello guest and reports how long it took.
Each problem comes with a fix. doctor exits 1 when a check fails.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep := a.doctor(cmd.Context())
			if asJSON {
				if err := writeJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				printChecks(a.stdout, rep.Checks, isTerminal(a.stdout) && a.getenv("NO_COLOR") == "")
			}
			failed := 0
			for _, c := range rep.Checks {
				if c.Status == checkFail {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d checks failed", failed, len(rep.Checks))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return cmd
}

func (a *app) doctor(ctx context.Context) doctorReport {
	var checks []check
	kvm := checkKVM()
	checks = append(checks, kvm)
	fc, fcCheck := a.checkFirecracker(ctx)
	checks = append(checks, fcCheck, a.checkJailer(ctx, fc, fcCheck.Status == checkOK), checkTUN())
	for _, t := range baseimage.HostTools() {
		checks = append(checks, checkTool(t))
	}
	checks = append(checks, a.checkRuntimeDir(), a.checkStaging(ctx))
	if kvm.Status == checkOK && fcCheck.Status == checkOK {
		checks = append(checks, a.checkHello(ctx, fc))
	} else {
		checks = append(checks, check{Name: "hello guest", Status: checkFail,
			Detail: "not booted: KVM or Firecracker is not usable", Fix: "fix the checks above, then run smartvm doctor again"})
	}
	ok := true
	for _, c := range checks {
		ok = ok && c.Status != checkFail
	}
	return doctorReport{OK: ok, Checks: checks}
}

// printChecks writes one line per check, and an indented fix under each problem.
func printChecks(w io.Writer, checks []check, colour bool) {
	tags := map[string]string{checkOK: "[ ok ]", checkWarn: "[warn]", checkFail: "[FAIL]"}
	colours := map[string]string{checkOK: "\x1b[32m", checkWarn: "\x1b[33m", checkFail: "\x1b[31m"}
	for _, c := range checks {
		tag := tags[c.Status]
		if colour {
			tag = colours[c.Status] + tag + "\x1b[0m"
		}
		fmt.Fprintf(w, "%s %s: %s\n", tag, c.Name, c.Detail)
		if c.Fix != "" && c.Status != checkOK {
			fmt.Fprintf(w, "       fix: %s\n", c.Fix)
		}
	}
}

func checkKVM() check {
	c := check{Name: "/dev/kvm"}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	switch {
	case err == nil:
		f.Close()
		c.Status, c.Detail = checkOK, "read/write access"
	case errors.Is(err, os.ErrNotExist):
		c.Status, c.Detail = checkFail, "missing"
		c.Fix = "enable virtualization (VT-x/AMD-V in the firmware, nested virtualization in a cloud VM) and load the module: sudo modprobe kvm_intel (or kvm_amd)"
	case errors.Is(err, os.ErrPermission):
		c.Status, c.Detail = checkFail, "no read/write access"
		c.Fix = "sudo usermod -aG kvm $USER, then log in again (or: sudo setfacl -m u:$USER:rw /dev/kvm)"
	default:
		c.Status, c.Detail = checkFail, err.Error()
		c.Fix = "check that KVM works on this host: ls -l /dev/kvm; dmesg | grep -i kvm"
	}
	return c
}

func (a *app) checkFirecracker(ctx context.Context) (string, check) {
	c := check{Name: "firecracker"}
	fc, err := a.findFirecracker()
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		c.Fix = "run 'smartvm setup' to install the latest release into ~/.smartvm/bin, or point --firecracker-bin or $" + envFirecrackerBin + " at one"
		if !errors.Is(err, errNoFirecracker) {
			c.Fix = "point --firecracker-bin or $" + envFirecrackerBin + " at an executable firecracker, or unset it"
		}
		return "", c
	}
	v, err := smartvm.FirecrackerVersion(ctx, fc.Path)
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		c.Fix = "run 'smartvm setup' to install a working release"
		return "", c
	}
	c.Status, c.Detail = checkOK, fmt.Sprintf("v%s at %s (from %s)", v, fc.Path, fc.From)
	return fc.Path, c
}

func checkTUN() check {
	c := check{Name: "/dev/net/tun"}
	st, err := os.Stat("/dev/net/tun")
	switch {
	case err != nil:
		c.Status, c.Detail = checkWarn, fmt.Sprintf("missing (%s); only VMs with network interfaces need it", err)
		c.Fix = "sudo modprobe tun"
	case st.Mode()&os.ModeCharDevice == 0:
		c.Status, c.Detail = checkWarn, "not a character device; only VMs with network interfaces need it"
		c.Fix = "sudo rm /dev/net/tun && sudo modprobe tun (or recreate it: sudo mknod /dev/net/tun c 10 200)"
	default:
		c.Status, c.Detail = checkOK, "present"
	}
	return c
}

// checkTool reports a host tool that base image conversion runs, found as the conversion
// finds it.
func checkTool(t baseimage.Tool) check {
	c := check{Name: t.Name}
	if t.Path != "" {
		c.Status, c.Detail = checkOK, t.Path
		return c
	}
	c.Status, c.Detail = checkFail, "not found; needed to turn the default base images (squashfs) into ext4 root filesystems"
	c.Fix = "sudo apt-get install " + t.Package + " (Debian/Ubuntu; the package is " + t.Package + " on most distributions)"
	return c
}

func (a *app) checkRuntimeDir() check {
	c := check{Name: "runtime dir"}
	mgr, err := a.manager(nil)
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		c.Fix = "point --runtime-dir or $" + envRuntimeDir + " at a writable directory, ideally on tmpfs such as /dev/shm"
		return c
	}
	dir := mgr.RuntimeDir()
	mgr.Close()
	fs, err := statFS(dir)
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		return c
	}
	c.Detail = fmt.Sprintf("%s on %s, %s free", dir, fs.kind, formatBytes(fs.free))
	switch {
	case fs.free < minRuntimeFree:
		c.Status = checkFail
		c.Fix = "free space there, or choose another directory with --runtime-dir or $" + envRuntimeDir
	case fs.free < lowRuntimeFree:
		c.Status = checkWarn
		c.Fix = "a base image's writable root filesystem is copied here (up to a few GiB): free space, or choose another directory with --runtime-dir"
	case !fs.tmpfs:
		c.Status = checkWarn
		c.Fix = "a tmpfs (such as /dev/shm) keeps sockets, logs and drive copies off the disk: --runtime-dir /dev/shm/.smartvm/runtime"
	default:
		c.Status = checkOK
	}
	return c
}

// checkStaging says where writable drive copies go and what they cost there.
func (a *app) checkStaging(ctx context.Context) check {
	c := check{Name: "drive staging", Status: checkOK}
	mgr, err := a.manager(nil)
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		return c
	}
	defer mgr.Close()
	dir, where := filepath.Join(mgr.RuntimeDir(), "vms"), "each VM's runtime directory"
	if staging, _ := a.stagingDir(); staging != "" {
		dir, where = staging, staging
		if err := os.MkdirAll(staging, 0o700); err != nil {
			c.Status, c.Detail = checkFail, err.Error()
			c.Fix = "point --staging-dir or $" + envStagingDir + " at a writable directory"
			return c
		}
	}
	fs, err := statFS(dir)
	if err != nil {
		c.Status, c.Detail = checkFail, err.Error()
		return c
	}
	var staged int64
	infos, _ := mgr.List(ctx)
	for _, info := range infos {
		staged += info.StagedBytes
	}
	now := fmt.Sprintf("; %d running VM(s) hold %s of copies", len(infos), formatBytes(staged))
	switch {
	case fs.reflinks:
		c.Detail = fmt.Sprintf("in %s, on %s: copies are reflinks and cost only what the guest writes%s", where, fs.kind, now)
	case fs.tmpfs:
		c.Detail = fmt.Sprintf("in %s, on tmpfs: each writable drive copy costs RAM equal to its data (a CI image's root filesystem: about 660 MiB per VM)%s", where, now)
		c.Status = checkWarn
		c.Fix = "to make copies free, set --staging-dir or $" + envStagingDir + " to a directory on btrfs or XFS"
	default:
		c.Detail = fmt.Sprintf("in %s, on %s: each writable drive copy costs disk space equal to its data%s", where, fs.kind, now)
	}
	return c
}

// checkHello boots the built-in hello guest and times it from the start request to its end.
func (a *app) checkHello(ctx context.Context, fc string) check {
	c := check{Name: "hello guest"}
	fail := func(err error) check {
		c.Status, c.Detail = checkFail, err.Error()
		c.Fix = "run 'smartvm run --image hello --log-level debug' to see more"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	mgr, err := a.manager(nil, smartvm.WithFirecrackerBinary(fc))
	if err != nil {
		return fail(err)
	}
	defer mgr.Close()
	plan := runPlan{Hello: true, GeneratedName: true}
	plan.Spec.Name = "doctor-" + generateName()
	plan.Spec.BootArgs = testguest.BootArgs(testguest.ModeHello)
	begin := time.Now()
	m, err := startVM(ctx, mgr, plan)
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	waitErr := m.Wait(ctx)
	took := time.Since(begin)
	if waitErr != nil {
		_ = m.Kill() // it did not end by itself in time; the console stream ends with it
	}
	con, err := m.Console()
	if err != nil {
		return fail(err)
	}
	defer con.Close()
	out, err := io.ReadAll(con)
	if err != nil {
		return fail(err)
	}
	if waitErr != nil {
		return fail(fmt.Errorf("the guest did not end cleanly: %w", waitErr))
	}
	if !strings.Contains(string(out), testguest.HelloLine) {
		return fail(fmt.Errorf("the guest ended without its greeting; its console said %q", out))
	}
	c.Status = checkOK
	c.DurationMS = took.Milliseconds()
	c.Detail = fmt.Sprintf("booted, printed %q and ended in %s", testguest.HelloLine, took.Round(time.Millisecond))
	return c
}
