package cli

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/baseimage"
)

// runtimeDir is --runtime-dir, else $SMARTVM_RUNTIME_DIR, else "" for the library's default.
func (a *app) runtimeDir() (string, error) {
	return a.dirSetting("runtime dir", a.runtimeDirFlag, envRuntimeDir)
}

// stagingDir is --staging-dir, else $SMARTVM_STAGING_DIR, else "" for the VMs' runtime
// directories.
func (a *app) stagingDir() (string, error) {
	return a.dirSetting("staging dir", a.stagingDirFlag, envStagingDir)
}

// dirSetting is a directory from its flag, else its environment variable, made absolute;
// "" when neither is set.
func (a *app) dirSetting(what, flag, env string) (string, error) {
	dir := flag
	if dir == "" {
		dir = a.getenv(env)
	}
	if dir == "" {
		return "", nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, dir, err)
	}
	return abs, nil
}

// manager opens the runtime root, reaping dead VMs. images is the base image cache the VMs
// use (nil: open it without progress reporting); reaping a VM that booted a base image
// releases its hold on the image there.
func (a *app) manager(images *baseimage.Manager, opts ...smartvm.Option) (*smartvm.Manager, error) {
	if images == nil {
		var err error
		if images, err = a.baseImages(nil); err != nil {
			return nil, err
		}
	}
	dir, err := a.runtimeDir()
	if err != nil {
		return nil, err
	}
	staging, err := a.stagingDir()
	if err != nil {
		return nil, err
	}
	all := []smartvm.Option{smartvm.WithLogger(a.log), smartvm.WithBaseImages(images), smartvm.WithStagingDir(staging)}
	if agent, err := a.agentBinary(); err == nil {
		all = append(all, smartvm.WithAgentBinary(agent))
	}
	if dir != "" {
		all = append(all, smartvm.WithRuntimeDir(dir))
	}
	mgr, err := smartvm.NewManager(append(all, opts...)...)
	if err != nil {
		return nil, err
	}
	return mgr, nil
}

// attach adopts the running VM called name, with a message that helps when there is none.
func attach(ctx context.Context, mgr *smartvm.Manager, name string) (*smartvm.Machine, error) {
	m, err := mgr.Attach(ctx, name)
	if err != nil {
		return nil, attachError(name, err)
	}
	return m, nil
}

// attachError is Attach's error for VM name, with a message that helps when the VM is not
// running.
func attachError(name string, err error) error {
	switch {
	case errors.Is(err, smartvm.ErrNotFound):
		return fmt.Errorf("no running vm is called %q (see 'smartvm ps')", name)
	case errors.Is(err, smartvm.ErrExited):
		return fmt.Errorf("vm %s has exited (see 'smartvm inspect %s' and 'smartvm logs %s'; remove it with smartvm rm %s)", name, name, name, name)
	}
	return err
}

// newVMsCmd builds a command that runs fn on each VM named on its command line (see eachVM).
func (a *app) newVMsCmd(use, short, long string, after afterVM, fn func(context.Context, *smartvm.Machine) error) *cobra.Command {
	return &cobra.Command{
		Use:               use,
		Short:             short,
		Long:              long,
		Args:              minArgs(1, "at least one VM name"),
		ValidArgsFunction: a.completeVMNames,
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.onVMs(cmd.Context(), names, after, nil, fn)
		},
	}
}

// completeOneVMName completes the name of a VM (running, or exited) for a command that takes one.
func (a *app) completeOneVMName(cmd *cobra.Command, args []string, s string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.completeVMNames(cmd, args, s)
}

// completeVMNames completes the names of VMs (running, or exited: rm, logs and inspect take those) not
// yet on the command line.
func (a *app) completeVMNames(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	mgr, err := a.manager(nil)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer mgr.Close()
	infos, err := mgr.List(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, info := range infos {
		if !slices.Contains(args, info.Name) {
			names = append(names, info.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// What eachVM does with a VM after fn.
type afterVM int

const (
	vmClose   afterVM = iota // close it: fn ended it, and closing waits until its files are gone
	vmRelease                // let go of it: it keeps running
	vmDone                   // nothing: fn closed or released it itself
)

// onVMs opens the runtime root with opts and runs eachVM.
func (a *app) onVMs(ctx context.Context, names []string, after afterVM, opts []smartvm.Option, fn func(context.Context, *smartvm.Machine) error) error {
	mgr, err := a.manager(nil, opts...)
	if err != nil {
		return err
	}
	defer mgr.Close()
	return a.eachVM(ctx, mgr, names, after, fn)
}

// withVM attaches the running VM called name, runs fn on it, and lets go of it (it keeps
// running).
func (a *app) withVM(ctx context.Context, name string, fn func(*smartvm.Machine) error) error {
	mgr, m, err := a.attachVM(ctx, name)
	if err != nil {
		return err
	}
	defer mgr.Close()
	return errors.Join(fn(m), m.Release())
}

// attachVM opens the runtime root and attaches the running VM called name. The caller lets
// go of the VM (Release) or closes it, then closes the manager.
func (a *app) attachVM(ctx context.Context, name string) (*smartvm.Manager, *smartvm.Machine, error) {
	mgr, err := a.manager(nil)
	if err != nil {
		return nil, nil, err
	}
	m, err := attach(ctx, mgr, name)
	if err != nil {
		mgr.Close()
		return nil, nil, err
	}
	return mgr, m, nil
}

// eachVM attaches every named VM and runs fn on it, all at once. It prints the name of each VM
// fn succeeded on, in the order given, and returns the failures as one error. after says what
// to do with the VM once fn returns.
func (a *app) eachVM(ctx context.Context, mgr *smartvm.Manager, names []string, after afterVM, fn func(context.Context, *smartvm.Machine) error) error {
	return a.eachName(names, func(name string) error {
		m, err := attach(ctx, mgr, name)
		if err != nil {
			return err
		}
		err = fn(ctx, m)
		switch after {
		case vmRelease:
			err = errors.Join(err, m.Release())
		case vmClose:
			err = errors.Join(err, m.Close())
		}
		return err
	})
}

// eachName runs fn on every name once (duplicates dropped), all at once. It prints each name
// fn succeeded on, in the order given, and returns the failures as one error.
func (a *app) eachName(names []string, fn func(name string) error) error {
	var unique []string
	for _, n := range names {
		if !slices.Contains(unique, n) {
			unique = append(unique, n)
		}
	}
	errs := make([]error, len(unique))
	var wg sync.WaitGroup
	for i, name := range unique {
		wg.Go(func() { errs[i] = fn(name) })
	}
	wg.Wait()
	var failed []error
	for i, name := range unique {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		fmt.Fprintln(a.stdout, name)
	}
	return joinErrors(failed)
}

// imageLabel names what a VM boots, shortly, for ps: its base image's name (names maps
// cached image IDs to names), else its preset, the file name of its manifest (without .json)
// or its kernel file's name.
func imageLabel(info smartvm.MachineInfo, names map[string]string) string {
	spec := info.Spec
	if n := names[info.BaseImage]; n != "" && info.BaseImage != "" {
		return n
	}
	switch {
	case spec.BaseImagePreset != "":
		return spec.BaseImagePreset
	case spec.BaseImageManifestURL != "":
		u := strings.TrimRight(spec.BaseImageManifestURL, "/")
		if i := strings.IndexAny(u, "?#"); i >= 0 {
			u = u[:i]
		}
		return strings.TrimSuffix(path.Base(u), ".json")
	case spec.BaseImageManifestPath != "":
		return strings.TrimSuffix(filepath.Base(spec.BaseImageManifestPath), ".json")
	case spec.Kernel != "":
		return filepath.Base(spec.Kernel)
	}
	return "-"
}

// imageNames maps the IDs of the cached base images to their names; empty when the cache
// cannot be read (ps then shows less precise labels).
func (a *app) imageNames(ctx context.Context) map[string]string {
	names := map[string]string{}
	_, list, _ := a.cachedImages(ctx)
	for _, b := range list {
		names[b.ID] = b.Name
	}
	return names
}
