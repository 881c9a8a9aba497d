package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/internal/jailer"
)

// envJailerBin names the jailer; else the CLI uses the "jailer" beside firecracker.
const envJailerBin = "SMARTVM_JAILER_BIN"

// jailFlags are run's jailer flags.
type jailFlags struct {
	jailer, noJailer bool
	cpuQuota         float64
	memoryLimit      string
	chrootBase       string
}

func addJailFlags(fl *pflag.FlagSet, f *jailFlags) {
	fl.BoolVar(&f.jailer, "jailer", false, "run firecracker through its jailer (the default as root when a jailer of firecracker's release is found; needs root)")
	fl.BoolVar(&f.noJailer, "no-jailer", false, "run firecracker directly, without the jailer")
	fl.Float64Var(&f.cpuQuota, "cpu-quota", 0, "cap firecracker's CPU time, in CPUs, such as 0.5 (a cgroup limit; implies --jailer)")
	fl.StringVar(&f.chrootBase, "chroot-base", "", "where the jailer builds its chroots (default "+smartvm.DefaultChrootBase+"; persistent drives must be on its filesystem)")
	fl.StringVar(&f.memoryLimit, "memory-limit", "", "cap firecracker's memory, guest memory included, such as 1G or 512M (a cgroup limit; implies --jailer)")
}

// jailerBin is the jailer the CLI would use and where it found it.
type jailerBin struct {
	Path string `json:"path"`
	// From is "$SMARTVM_JAILER_BIN" or "beside firecracker".
	From string `json:"from"`
}

// findJailer returns $SMARTVM_JAILER_BIN, else the jailer beside firecracker fc.
func (a *app) findJailer(fc string) (jailerBin, error) {
	if p := a.getenv(envJailerBin); p != "" {
		abs, err := filepath.Abs(p)
		if err == nil {
			err = checkExecutable(abs)
		}
		if err != nil {
			return jailerBin{}, fmt.Errorf("jailer from $%s: %w", envJailerBin, err)
		}
		return jailerBin{Path: abs, From: "$" + envJailerBin}, nil
	}
	p := filepath.Join(filepath.Dir(fc), "jailer")
	if err := checkExecutable(p); err != nil {
		return jailerBin{}, fmt.Errorf("no jailer beside firecracker (%s), and $%s is not set: run 'smartvm setup' to install firecracker with its jailer: %w", p, envJailerBin, err)
	}
	return jailerBin{Path: p, From: "beside firecracker"}, nil
}

// jailerOptions are the manager options naming the jailer the CLI found for firecracker fc,
// if any.
func (a *app) jailerOptions(fc string) []smartvm.Option {
	if j, err := a.findJailer(fc); err == nil {
		return []smartvm.Option{smartvm.WithJailerBinary(j.Path)}
	}
	return nil
}

// jailerUsable reports whether the jailer beside fc (or $SMARTVM_JAILER_BIN) is of fc's
// release, and why not.
func (a *app) jailerUsable(ctx context.Context, fc string) (jailerBin, error) {
	j, err := a.findJailer(fc)
	if err != nil {
		return j, err
	}
	jv, err := jailer.Version(ctx, j.Path)
	if err != nil {
		return j, err
	}
	fv, err := smartvm.FirecrackerVersion(ctx, fc)
	if err != nil {
		return j, err
	}
	return j, jailer.CheckVersion(j.Path, jv, fc, fv)
}

// jailerOf is planJail's question for firecracker fc: is there a jailer of its release? The
// CLI finds the jailer ($SMARTVM_JAILER_BIN, else beside fc; mgr was made with it), and mgr
// answers from the versions cached in its runtime root, so a run spawns neither `jailer
// --version` nor `firecracker --version` once both are known.
func (a *app) jailerOf(mgr *smartvm.Manager, fc string) func(context.Context) error {
	return func(ctx context.Context) error {
		if _, err := a.findJailer(fc); err != nil {
			return err
		}
		_, _, err := mgr.Jailer(ctx)
		return err
	}
}

// planJail decides whether the VM runs jailed: --jailer (or a limit, or a jailer in a --file
// spec) asks for it, --no-jailer refuses it, and otherwise it does as root when usable says
// a jailer of firecracker's release is there. The flags override a --file spec's jailer
// settings.
func (a *app) planJail(ctx context.Context, f jailFlags, plan *runPlan, usable func(context.Context) error) error {
	limits := f.cpuQuota != 0 || f.memoryLimit != ""
	if f.noJailer && (f.jailer || limits || f.chrootBase != "") {
		return usagef("--no-jailer cannot be combined with --jailer, --cpu-quota, --memory-limit or --chroot-base")
	}
	if f.noJailer {
		plan.Spec.Jailer = nil
		return nil
	}
	if plan.Snapshot != "" {
		return nil // the snapshot's spec says whether it was jailed
	}
	want := f.jailer || limits || plan.Spec.Jailer != nil
	if !want {
		if os.Geteuid() != 0 {
			return nil
		}
		if err := usable(ctx); err != nil {
			return nil // no usable jailer: run unjailed, as doctor reports
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the jailer needs root: run as root, or drop --jailer, --cpu-quota and --memory-limit: %w", smartvm.ErrJailer)
	}
	if f.cpuQuota < 0 {
		return usagef("invalid --cpu-quota %g: want a number of CPUs, such as 0.5", f.cpuQuota)
	}
	js := plan.Spec.Jailer
	if js == nil {
		js = &smartvm.JailerSpec{}
	}
	if f.cpuQuota != 0 {
		js.CPUQuota = f.cpuQuota
	}
	if f.chrootBase != "" {
		var err error
		if js.ChrootBase, err = absPath("--chroot-base", f.chrootBase); err != nil {
			return err
		}
	}
	if f.memoryLimit != "" {
		n, err := parseBytes(f.memoryLimit)
		if err != nil {
			return usagef("invalid --memory-limit %q: %v", f.memoryLimit, err)
		}
		js.MemoryLimit = n
	}
	plan.Spec.Jailer = js
	return nil
}

// parseBytes reads a size such as 512M, 1G, 1.5GiB or 1048576 (bytes).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1<<62 {
		return 0, errors.New("want a size such as 512M or 1G")
	}
	return int64(v * float64(mult)), nil
}

// checkJailer is doctor's jailer line: which jailer run would use, its version, whether it
// matches firecracker's, and the host's cgroup layout; without root, that VMs run unjailed.
func (a *app) checkJailer(ctx context.Context, fc string, fcOK bool) check {
	c := check{Name: "jailer"}
	layout := "cgroups: unknown"
	if l, err := jailer.DetectCgroups(); err == nil {
		layout = "cgroups " + l.String() + ", limits use v" + strconv.Itoa(l.Version())
	}
	if !fcOK {
		c.Status, c.Detail, c.Fix = checkWarn, "not checked: no usable firecracker; "+layout, "fix firecracker first"
		return c
	}
	j, err := a.jailerUsable(ctx, fc)
	switch {
	case err != nil && j.Path == "":
		c.Status, c.Detail = checkWarn, fmt.Sprintf("none found, VMs run unjailed (%v); %s", err, layout)
		c.Fix = "run 'smartvm setup' (it installs the jailer beside firecracker), or set $" + envJailerBin
	case err != nil:
		c.Status, c.Detail = checkWarn, fmt.Sprintf("%s (%s) unusable, VMs run unjailed: %v; %s", j.Path, j.From, err, layout)
		c.Fix = "install the jailer of firecracker's release ('smartvm setup' does)"
	case os.Geteuid() != 0:
		v, _ := jailer.Version(ctx, j.Path)
		c.Status, c.Detail = checkWarn, fmt.Sprintf("%s v%s (%s), but not root: VMs run unjailed; %s", j.Path, v, j.From, layout)
		c.Fix = "run smartvm as root to jail VMs (run uses the jailer by default then)"
	default:
		v, _ := jailer.Version(ctx, j.Path)
		c.Status, c.Detail = checkOK, fmt.Sprintf("%s v%s (%s), firecracker's release: run jails VMs by default; %s", j.Path, v, j.From, layout)
	}
	return c
}
