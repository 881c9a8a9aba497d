package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/netdev"
)

// imageHello is the --image value that boots the built-in test guest.
const imageHello = "hello"

// runFlags are the flags of `smartvm run`.
type runFlags struct {
	name, image                 string
	kernel, initrd, rootfs      string
	bootArgs, bootMode          string
	cpus, memory                int
	drives                      []string
	persistentRootfs, enablePCI bool
	detach, noInstall           bool
	rm                          bool
	net, noNAT                  bool
	netNamespace, netIPArg      bool
	vsock, agent, waitAgent     bool
	labels                      []string
	nics                        int
	uplink                      string
	specFile, metadata          string
	serialLogMiB                int
	balloon                     int
	balloonDeflate              bool
	cpuTemplate, hugePages      string
	smt, trackDirtyPages        bool
	jail                        jailFlags
	rate                        rateFlags
	// The main process of an image whose init is the agent (see mainPlan).
	cmd                       []string
	env                       []string
	workdir, user, entrypoint string
	entrypointSet             bool
	tty, interactive, console bool
	// changed reports whether the command line set a flag; nil: every flag counts as set.
	// With --file, only the flags set override the file's spec.
	changed func(name string) bool
}

// runPlan is what to boot, resolved from the flags and the environment. The detached
// supervisor receives it as JSON.
type runPlan struct {
	Spec smartvm.MachineSpec `json:"spec"`
	// Hello boots the built-in test guest: its kernel is written to a temporary file at start
	// and removed once the VM has booted.
	Hello bool `json:"hello,omitempty"`
	// GeneratedName lets start pick another name when the generated one is taken.
	GeneratedName bool `json:"generated_name,omitempty"`
	// Snapshot, when set, is the absolute path of a snapshot directory: the VM saved there
	// is restored, and Spec is not used.
	Snapshot string `json:"snapshot,omitempty"`
	// RestoreName is the name the snapshot's VM is restored under; empty: its own.
	RestoreName string `json:"restore_name,omitempty"`
	// Vsock adds a vsock device with a free guest CID, picked at start, and its socket in
	// the VM's directory.
	Vsock bool `json:"vsock,omitempty"`
	// SerialLogLimit bounds serial.log in bytes (smartvm.WithSerialLogLimit): 0 for the
	// default, -1 for none.
	SerialLogLimit int64 `json:"serial_log_limit,omitempty"`
	// WaitAgent waits, once the VM runs, until its guest agent says it is ready.
	WaitAgent bool `json:"wait_agent,omitempty"`
	// Main starts the main process of a VM whose init is the agent (Spec.AgentMain), once
	// the VM runs; nil for other VMs.
	Main *mainPlan `json:"main,omitempty"`
	// Keep keeps the VM's record once it ends, as exited (smartvm.KeepExited), until rm.
	Keep bool `json:"keep,omitempty"`
	// MemoryBackend is how a restored VM gets its memory (smartvm.WithMemoryBackend); empty
	// for the default.
	MemoryBackend smartvm.MemoryBackend `json:"memory_backend,omitempty"`
}

// managerOptions are the options of the manager that runs the plan's VM.
func (p runPlan) managerOptions() []smartvm.Option {
	return []smartvm.Option{smartvm.WithStopGracePeriod(stopGrace), smartvm.WithSerialLogLimit(p.SerialLogLimit)}
}

func (a *app) newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] [IMAGE] [-- CMD [ARG...]]",
		Short: "Boot a VM",
		Long: `Boot a VM and attach its serial console to this terminal, or, for an image whose
init is smartvm-agent, its main process's stdio.

What to boot:
  (nothing)                the default base image: $SMARTVM_BASE_IMAGE_MANIFEST_URL,
                           $SMARTVM_BASE_IMAGE_MANIFEST_PATH or $SMARTVM_BASE_IMAGE_PRESET
                           when set, else preset latest (pulled on first use)
  IMAGE                    the same as --image IMAGE; flags come before it, and what
                           follows it (after an optional --) is the main process's command
  --image latest|lts       a base image from Firecracker's CI bucket
  --image URL|PATH         the base image a manifest describes
  --image hello            the built-in test guest: prints a greeting and ends (no download)
  --kernel K [--rootfs R] [--initrd I]
                           your own kernel, root filesystem and initrd
  -f spec.json             a MachineSpec in its JSON form (relative paths are relative to
                           the file); the flags given with it override it

Writable drives are ephemeral: the VM writes to a private copy that is deleted with it.
--persistent-rootfs and --drive PATH:persistent write to the files themselves.

In the foreground, the VM's serial console is attached to this terminal, in raw mode when
stdin is a terminal: every key, Ctrl-C included, goes to the guest. ` + escapeHelp + ` (Ctrl-], then q,
no Enter needed) stops the VM gracefully (Ctrl-Alt-Del, then SIGTERM after ` + stopGrace.String() + `, then SIGKILL), as do
SIGINT and SIGTERM sent to smartvm; Ctrl-] Ctrl-] sends one Ctrl-] to the guest. When stdin
is not a terminal, what it carries goes to the guest, and the escape sequence works there
too. run exits 0 when the guest shut down or was stopped, 1 when Firecracker failed.
Everything the VM used on the host is removed when it ends.

Networking (needs root, or CAP_NET_ADMIN):
  --net                    one network interface, eth0, on a TAP device with a /30 from
                           172.16.0.0/16. The guest's address is encoded in its MAC, which the
                           CI images' fcnet service applies by itself. NAT lets the guest
                           reach the outside through the host's default route.
  --no-nat                 with --net: no NAT, the guest reaches only the host
  --net-namespace          put the TAP device in a network namespace of the VM's own
                           (implies --net)
  --net-ip-arg             also configure the guest with the kernel's ip= argument, for
                           guests without fcnet (implies --net)
  --nics N                 N interfaces, eth0 to eth<N-1>, each on a TAP and /30 of its own
  --uplink DEV             the host device NAT sends traffic out of (default: the device of
                           the default route)
  --metadata FILE          the metadata service (MMDS, V2) starts with FILE's JSON; the guest
                           reaches it at 169.254.169.254 through its interfaces
ps and inspect show the guest's address; 'smartvm ssh NAME' logs in to a base image's guest.

The main process (images whose init is smartvm-agent, such as OCI images, or a spec with
"agent_main": true), as with docker run: the agent starts it only once run is attached, and
in the foreground its stdin, stdout and stderr are smartvm's (not the serial console's; use
--console to see that instead); run exits with its exit code, and the VM powers off when it
ends. CMD ARG... replace the image's Cmd, --entrypoint its entrypoint (and drops its Cmd; ""
clears it), -e adds a variable (K=V, or K for its value here), -w sets the working
directory, -u the user (name, uid, user:group). -i passes stdin, -t gives it a
pseudo-terminal (-it: this terminal in raw mode). SIGINT and SIGTERM stop the VM, whose
agent passes SIGTERM on to the main process. With --detach, its output goes to the serial
console (see logs).

--vsock gives the VM a virtio-vsock device: the lowest guest CID (3 or more) no other VM in
the runtime root uses, and a host-side Unix socket in the VM's directory, which inspect shows
as vsock_socket. Connect to it and send "CONNECT <port>\n" to reach a guest port (Firecracker
answers "OK <hostport>\n"); guest connections to the host's port P arrive on
<vsock_socket>_P.

With --detach, run returns once the VM runs and prints its name. A supervisor process (smartvm
itself, in the background) owns the VM and cleans up when it ends; see ps, logs, attach, stop.
A detached VM that ends is kept as exited, as docker keeps a container: everything it used
on the host is released, but 'ps -a' lists it, 'logs' prints its serial console, 'inspect'
says how it ended, and its name stays taken until 'smartvm rm NAME'. --rm removes it when it
ends instead, as a foreground run always does (--rm=false keeps a foreground VM too). A VM
whose main process fails to start is kept or removed by the same rule, detached or not.

When no firecracker binary is found, run installs the latest release into ~/.smartvm/bin as
'smartvm setup' does, unless --no-install is given.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.changed = cmd.Flags().Changed
			if err := f.positional(args, cmd.ArgsLenAtDash()); err != nil {
				return err
			}
			f.entrypointSet = cmd.Flags().Changed("entrypoint")
			plan, err := a.planRun(f)
			if err != nil {
				return err
			}
			plan.Keep = keepExited(cmd, f.rm, f.detach)
			return a.runVM(cmd.Context(), f, plan)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "VM name: letters, digits and '-' (default: a generated name such as brave-otter)")
	fl.StringVar(&f.image, "image", "", "what to boot: hello, latest, lts, a manifest file or URL (.json), or an OCI image such as alpine:3.20")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel (uncompressed vmlinux) instead of an image")
	fl.StringVar(&f.initrd, "initrd", "", "initrd to boot with --kernel")
	fl.StringVar(&f.rootfs, "rootfs", "", "root filesystem image to boot with --kernel")
	fl.StringVar(&f.bootArgs, "boot-args", "", "kernel command line (default: the image's, else \""+smartvm.DefaultBootArgs+"\")")
	fl.IntVar(&f.cpus, "cpus", smartvm.DefaultVCPUs, "number of vCPUs")
	f.memory = smartvm.DefaultMemoryMiB
	fl.Var(mibFlag{&f.memory}, "memory", "guest memory: MiB (512), or a size with a unit (512M, 1G, 1GiB)")
	fl.StringArrayVar(&f.drives, "drive", nil, "extra drive (repeatable): `PATH` (the VM writes to a private copy), PATH:ro (read-only) or PATH:persistent (written in place)")
	fl.BoolVar(&f.persistentRootfs, "persistent-rootfs", false, "let the guest write to the --rootfs file itself instead of a copy")
	fl.StringVar(&f.bootMode, "boot-mode", string(smartvm.BootModeAPI), "how to configure Firecracker: api or config-file")
	fl.BoolVar(&f.enablePCI, "enable-pci", false, "use PCI instead of MMIO for virtio devices (Firecracker 1.13+, guest needs PCI)")
	fl.BoolVar(&f.net, "net", false, "give the VM a network interface, with NAT to the outside (needs root)")
	fl.BoolVar(&f.noNAT, "no-nat", false, "with --net: no NAT, the guest reaches only the host")
	fl.BoolVar(&f.netNamespace, "net-namespace", false, "put the VM's TAP device in a network namespace of its own (implies --net)")
	fl.BoolVar(&f.netIPArg, "net-ip-arg", false, "configure the guest with the kernel's ip= argument, for guests without fcnet (implies --net)")
	fl.BoolVar(&f.vsock, "vsock", false, "give the VM a vsock device (a free guest CID; its socket in the VM's directory)")
	fl.StringVarP(&f.specFile, "file", "f", "", "boot the MachineSpec in this JSON `FILE` (relative paths in it are relative to the file); flags given too override it")
	fl.StringVar(&f.metadata, "metadata", "", "start the metadata service (MMDS) with the JSON in `FILE`; the guest reaches it through its NIC (needs --net)")
	fl.Var(mibFlag{&f.balloon}, "balloon", "add a memory balloon inflated to this size (MiB, or 256M, 1G)")
	fl.BoolVar(&f.balloonDeflate, "balloon-deflate-on-oom", false, "with --balloon: let the guest deflate the balloon when it runs out of memory")
	fl.IntVar(&f.nics, "nics", 0, "with --net: this many network interfaces (eth0, eth1, ...), each on a TAP of its own (implies --net)")
	fl.StringVar(&f.uplink, "uplink", "", "with --net: the host `DEV`ice NAT sends the guest's traffic out of (default: the device of the default route; implies --net)")
	fl.StringVar(&f.cpuTemplate, "cpu-template", "", "static CPU template that masks CPU features: C3, T2, T2S, T2CL, T2A (x86_64) or V1N1 (aarch64)")
	fl.StringVar(&f.hugePages, "huge-pages", "", "back guest memory with huge pages: 2M (needs free hugetlbfs pages) or transparent (newer than Firecracker v1.16)")
	fl.BoolVar(&f.trackDirtyPages, "track-dirty-pages", false, "track the pages the guest writes, so that 'smartvm snapshot --diff' can save only those")
	fl.BoolVar(&f.smt, "smt", false, "enable simultaneous multithreading (x86_64; --cpus must be 1 or even)")
	fl.StringArrayVarP(&f.labels, "label", "l", nil, "label the VM (repeatable): `KEY=VALUE`, or KEY for an empty value; ps --filter label=KEY=VALUE selects by it")
	f.serialLogMiB = smartvm.DefaultSerialLogLimit >> 20
	fl.Var(mibFlag{&f.serialLogMiB}, "serial-log-limit", "keep about this much of the guest's serial output in serial.log (MiB, or 1G...); older output is dropped; 0: no limit")
	fl.BoolVar(&f.agent, "agent", false, "install smartvm-agent into the VM's private copy of its ext4 root filesystem, for exec and cp ($"+envAgentBin+", else smartvm itself when built static)")
	fl.BoolVar(&f.waitAgent, "wait-agent", false, "return (or attach the console) only once the guest agent says it is ready, within "+agentReadyTimeout.String())
	fl.BoolVarP(&f.detach, "detach", "d", false, "run in the background and print the VM's name")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "main process: set an environment variable, K=V or K for its value here (repeatable)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "main process: working directory in the guest (default: the image's)")
	fl.StringVarP(&f.user, "user", "u", "", "main process: user to run as, a name, uid, or user:group (default: the image's)")
	fl.StringVar(&f.entrypoint, "entrypoint", "", "main process: replace the image's entrypoint (and drop its Cmd); \"\" clears it")
	fl.BoolVarP(&f.tty, "tty", "t", false, "main process: give it a pseudo-terminal")
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "main process: pass stdin to it")
	fl.BoolVar(&f.console, "console", false, "main process: show the serial console instead of attaching its stdio")
	cmd.Flags().SetInterspersed(false) // flags after IMAGE belong to CMD
	fl.BoolVar(&f.rm, "rm", false, "remove the VM when it ends (the default in the foreground; a detached VM is kept as exited until 'smartvm rm')")
	fl.BoolVar(&f.noInstall, "no-install", false, "fail instead of installing Firecracker when none is found")
	registerRunCompletions(cmd)
	addJailFlags(fl, &f.jail)
	addRateFlags(fl, &f.rate)
	return cmd
}

// positional reads run's arguments: [IMAGE] [--] [CMD ARG...]. Flags end at IMAGE, so
// dash (the number of arguments before a --) is only set when -- comes before any IMAGE.
func (f *runFlags) positional(args []string, dash int) error {
	if dash >= 0 {
		f.cmd = args[dash:]
		return nil
	}
	if len(args) == 0 {
		return nil
	}
	if f.image != "" {
		return usagef("give IMAGE or --image, not both")
	}
	f.image, f.cmd = args[0], args[1:]
	if len(f.cmd) > 0 && f.cmd[0] == "--" {
		f.cmd = f.cmd[1:]
	}
	return nil
}

// planRun turns the flags (and, without image flags, the environment) into a runPlan. With
// --file it starts from the file's spec, and the flags that were given override it.
func (a *app) planRun(f runFlags) (runPlan, error) {
	var p runPlan
	s := &p.Spec
	fromFile := f.specFile != ""
	if fromFile {
		spec, err := readSpecFile(f.specFile)
		if err != nil {
			return p, err
		}
		*s = spec
	}
	set := func(name string) bool { return !fromFile || f.changed == nil || f.changed(name) }
	if set("name") {
		s.Name = f.name
	}
	if s.Name == "" {
		s.Name = generateName()
		p.GeneratedName = true
	}
	if set("cpus") {
		if f.cpus < 1 || f.cpus > smartvm.MaxVCPUs {
			return p, usagef("invalid --cpus %d: want 1 to %d", f.cpus, smartvm.MaxVCPUs)
		}
		s.VCPUs = f.cpus
	}
	if set("memory") {
		if f.memory < 1 || f.memory > smartvm.MaxMemoryMiB {
			return p, usagef("invalid --memory %d: want 1 MiB to %d MiB", f.memory, smartvm.MaxMemoryMiB)
		}
		s.MemoryMiB = f.memory
	}
	labels, err := parseLabels(f.labels)
	if err != nil {
		return p, err
	}
	if len(labels) > 0 {
		s.Labels = maps.Clone(s.Labels)
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		maps.Copy(s.Labels, labels)
	}
	if set("boot-args") {
		s.BootArgs = f.bootArgs
	}
	if set("enable-pci") {
		s.EnablePCI = f.enablePCI
	}
	if set("smt") {
		s.SMT = f.smt
	}
	if err := planMachine(s, f); err != nil {
		return p, err
	}
	// The agent is reached over vsock: --agent and --wait-agent add the device.
	p.Vsock = f.vsock || f.agent || f.waitAgent
	p.WaitAgent = f.waitAgent
	// Always: the foreground console types into it, and a detached VM keeps it for attach.
	s.SerialInput = true
	p.SerialLogLimit = int64(f.serialLogMiB) << 20
	if f.serialLogMiB == 0 {
		p.SerialLogLimit = -1
	}
	if err := planNetwork(s, f); err != nil {
		return p, err
	}
	if set("boot-mode") {
		switch smartvm.BootMode(f.bootMode) {
		case smartvm.BootModeAPI, smartvm.BootModeConfigFile:
			s.BootMode = smartvm.BootMode(f.bootMode)
		default:
			return p, usagef("invalid --boot-mode %q: want api or config-file", f.bootMode)
		}
	}

	switch {
	case f.image != "":
		for flag, v := range map[string]string{"--kernel": f.kernel, "--initrd": f.initrd, "--rootfs": f.rootfs} {
			if v != "" {
				return p, usagef("%s cannot be combined with --image: the image brings its own kernel and root filesystem", flag)
			}
		}
		clearBoot(s)
		if err := a.planImage(&p, f.image); err != nil {
			return p, err
		}
	case f.kernel != "":
		clearBoot(s)
		if s.Kernel, err = absPath("--kernel", f.kernel); err != nil {
			return p, err
		}
		if f.initrd != "" {
			if s.Initrd, err = absPath("--initrd", f.initrd); err != nil {
				return p, err
			}
		}
	case f.initrd != "" || (f.rootfs != "" && s.Kernel == ""):
		return p, usagef("--initrd and --rootfs need --kernel")
	case fromFile && (s.Kernel != "" || s.UsesBaseImage()):
		// The file says what to boot.
	default:
		src, err := a.imageSource(imageFlags{})
		if err != nil {
			return p, err
		}
		setBaseImage(s, src)
	}
	if f.agent {
		if f.persistentRootfs {
			return p, usagef("--agent installs the agent into a private copy of the root filesystem, and --persistent-rootfs has none")
		}
		if _, err := a.agentBinary(); err != nil {
			return p, err
		}
		s.Agent = true
	}
	if f.rootfs != "" {
		root, err := absPath("--rootfs", f.rootfs)
		if err != nil {
			return p, err
		}
		s.Drives = slices.DeleteFunc(slices.Clone(s.Drives), func(d smartvm.DriveSpec) bool { return d.Root })
		s.Drives = append([]smartvm.DriveSpec{{Path: root, Root: true, Persistent: f.persistentRootfs}}, s.Drives...)
	} else if f.persistentRootfs {
		return p, usagef("--persistent-rootfs needs --rootfs (a base image's root filesystem is always a private copy)")
	}
	for _, d := range f.drives {
		drive, err := parseDrive(d)
		if err != nil {
			return p, err
		}
		s.Drives = append(s.Drives, drive)
	}
	if f.metadata != "" {
		if err := planMetadata(s, f.metadata); err != nil {
			return p, err
		}
	}
	if s.BaseImageOCI != "" {
		// An OCI image's init is the agent: run attaches its main process as docker run does.
		s.AgentMain = true
	}
	if err := a.planMain(&p, f); err != nil {
		return p, err
	}
	return p, nil
}

// clearBoot forgets what a spec file said to boot, for --image or --kernel: its kernel,
// initrd, base image and root drive.
func clearBoot(s *smartvm.MachineSpec) {
	s.Kernel, s.Initrd = "", ""
	setBaseImage(s, baseimage.Source{})
	s.Drives = slices.DeleteFunc(slices.Clone(s.Drives), func(d smartvm.DriveSpec) bool { return d.Root })
}

// planMachine applies --cpu-template, --huge-pages, --track-dirty-pages and --balloon.
func planMachine(s *smartvm.MachineSpec, f runFlags) error {
	if f.trackDirtyPages {
		s.TrackDirtyPages = true
	}
	if f.cpuTemplate != "" {
		t, ok := cpuTemplates[strings.ToUpper(f.cpuTemplate)]
		if !ok {
			return usagef("invalid --cpu-template %q: want C3, T2, T2S, T2CL, T2A, V1N1 or none", f.cpuTemplate)
		}
		s.CPUTemplate = t
	}
	if f.hugePages != "" {
		switch strings.ToLower(f.hugePages) {
		case "2m":
			s.HugePages = fcapi.HugePages2M
		case "transparent":
			s.HugePages = fcapi.HugePagesTransparent
		case "none":
			s.HugePages = fcapi.HugePagesNone
		default:
			return usagef("invalid --huge-pages %q: want 2M, transparent or none", f.hugePages)
		}
	}
	switch {
	case f.balloon > 0:
		s.Balloon = &smartvm.BalloonSpec{AmountMiB: f.balloon, DeflateOnOOM: f.balloonDeflate}
	case f.balloonDeflate:
		if s.Balloon == nil {
			return usagef("--balloon-deflate-on-oom needs --balloon")
		}
		b := *s.Balloon
		b.DeflateOnOOM = true
		s.Balloon = &b
	}
	return nil
}

var cpuTemplates = map[string]fcapi.CPUTemplate{
	"C3": fcapi.CPUTemplateC3, "T2": fcapi.CPUTemplateT2, "T2S": fcapi.CPUTemplateT2S, "T2CL": fcapi.CPUTemplateT2CL,
	"T2A": fcapi.CPUTemplateT2A, "V1N1": fcapi.CPUTemplateV1N1, "NONE": fcapi.CPUTemplateNone,
}

// planNetwork applies --net, --no-nat, --net-namespace, --net-ip-arg, --nics and --uplink,
// on top of a spec file's network when there is one.
func planNetwork(s *smartvm.MachineSpec, f runFlags) error {
	if f.nics < 0 || f.nics > smartvm.MaxNICs {
		return usagef("invalid --nics %d: want 1 to %d", f.nics, smartvm.MaxNICs)
	}
	if !(f.net || f.netNamespace || f.netIPArg || f.nics > 0 || f.uplink != "") {
		if f.noNAT {
			if s.Network == nil {
				return usagef("--no-nat needs --net")
			}
			n := *s.Network
			n.NAT, n.Uplink = false, ""
			s.Network = &n
		}
		return nil
	}
	n := smartvm.NetworkSpec{NAT: true}
	if s.Network != nil {
		n = *s.Network
	}
	if f.noNAT {
		if f.uplink != "" {
			return usagef("--uplink names the device NAT uses: it means nothing with --no-nat")
		}
		n.NAT, n.Uplink = false, ""
	}
	n.Namespace = n.Namespace || f.netNamespace
	n.KernelIPArg = n.KernelIPArg || f.netIPArg
	if f.nics > 0 {
		n.NICs = make([]smartvm.NICSpec, f.nics)
	}
	if f.uplink != "" {
		n.Uplink = f.uplink
	}
	s.Network = &n
	return nil
}

// keepExited reads --rm for run, restore and clone: detached VMs are kept as exited once
// they end unless --rm; foreground ones only with --rm=false.
func keepExited(cmd *cobra.Command, rm, detach bool) bool {
	return !rm && (detach || cmd.Flags().Changed("rm"))
}

// planMetadata applies --metadata FILE: the MMDS store starts with the file's JSON.
func planMetadata(s *smartvm.MachineSpec, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--metadata: %w", err)
	}
	if !json.Valid(b) {
		return usagef("invalid --metadata %s: the file is not JSON", path)
	}
	if s.Network == nil && len(s.Interfaces) == 0 {
		return usagef("--metadata needs --net: the guest reaches the metadata service through a network interface")
	}
	m := smartvm.MMDSSpec{}
	if s.MMDS != nil {
		m = *s.MMDS
	}
	m.Data = b
	s.MMDS = &m
	return nil
}

// readSpecFile reads a MachineSpec in its JSON form (unknown keys are an error, to catch
// typos), with paths relative to the file's directory made absolute.
func readSpecFile(path string) (smartvm.MachineSpec, error) {
	var s smartvm.MachineSpec
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("--file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, usagef("invalid --file %s: %w", path, err)
	}
	if dec.More() {
		return s, usagef("invalid --file %s: more than one JSON value", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return s, fmt.Errorf("--file: %w", err)
	}
	dir := filepath.Dir(abs)
	resolve := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	resolve(&s.Kernel)
	resolve(&s.Initrd)
	resolve(&s.BaseImageManifestPath)
	s.Drives = slices.Clone(s.Drives)
	for i := range s.Drives {
		resolve(&s.Drives[i].Path)
	}
	if s.Vsock != nil {
		v := *s.Vsock
		resolve(&v.Path)
		s.Vsock = &v
	}
	return s, nil
}

// planImage applies --image: hello, a preset, a manifest URL or file, or an OCI image.
func (a *app) planImage(p *runPlan, image string) error {
	if image == imageHello {
		p.Hello = true
		if p.Spec.BootArgs == "" {
			p.Spec.BootArgs = testguest.BootArgs(testguest.ModeHello)
		}
		return nil
	}
	src, err := parseImage("--image", image)
	if err != nil {
		return err
	}
	setBaseImage(&p.Spec, src)
	return nil
}

// parseImage reads the IMAGE of run --image and images pull (flag names it in errors), as
// baseimage.ParseImageArg does: a preset (latest, lts), a manifest file or http(s) URL ending
// in .json, or an OCI image reference. hello is not a source.
func parseImage(flag, image string) (baseimage.Source, error) {
	src, err := baseimage.ParseImageArg(image)
	if err != nil {
		return src, usagef("invalid %s: %w", flag, err)
	}
	return src, nil
}

func setBaseImage(s *smartvm.MachineSpec, src baseimage.Source) {
	s.BaseImagePreset, s.BaseImageManifestURL, s.BaseImageManifestPath, s.BaseImageOCI = src.Preset, src.ManifestURL, src.ManifestPath, src.OCI
}

func baseImageSource(s smartvm.MachineSpec) baseimage.Source {
	return baseimage.Source{Preset: s.BaseImagePreset, ManifestURL: s.BaseImageManifestURL, ManifestPath: s.BaseImageManifestPath, OCI: s.BaseImageOCI}
}

func absPath(flag, p string) (string, error) {
	if p == "" {
		return "", usagef("%s needs a path", flag)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", flag, p, err)
	}
	return abs, nil
}

// parseLabels reads --label KEY=VALUE (or KEY, for an empty value) flags; a later flag for
// the same key wins.
func parseLabels(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(flags))
	for _, l := range flags {
		k, v, _ := strings.Cut(l, "=")
		if err := smartvm.CheckLabel(k, v); err != nil {
			return nil, usagef("invalid --label %q: %w", l, err)
		}
		labels[k] = v
	}
	return labels, nil
}

// parseDrive reads --drive PATH[:ro][:persistent].
func parseDrive(v string) (smartvm.DriveSpec, error) {
	var d smartvm.DriveSpec
	path := v
	for {
		i := strings.LastIndexByte(path, ':')
		if i < 0 {
			break
		}
		switch path[i+1:] {
		case "ro":
			d.ReadOnly = true
		case "persistent":
			d.Persistent = true
		default:
			i = -1
		}
		if i < 0 {
			break
		}
		path = path[:i]
	}
	if d.ReadOnly && d.Persistent {
		return d, usagef("invalid --drive %q: a read-only drive is never copied, so :persistent means nothing with :ro", v)
	}
	var err error
	if d.Path, err = absPath("--drive", path); err != nil {
		return d, err
	}
	return d, nil
}

// runVM boots the plan in the foreground or, with --detach, under a supervisor.
func (a *app) runVM(ctx context.Context, f runFlags, plan runPlan) error {
	fc, err := a.firecrackerForRun(ctx, f.noInstall)
	if err != nil {
		return err
	}
	finish := func(ctx context.Context, mgr *smartvm.Manager, plan *runPlan) error {
		if err := a.planJail(ctx, f.jail, plan, a.jailerOf(mgr, fc)); err != nil {
			return err
		}
		if err := applyRateFlags(f.rate, plan); err != nil {
			return err
		}
		if plan.Spec.UsesBaseImage() {
			// Pull here, with progress on this terminal; Start then finds the image cached.
			if _, err := a.pull(ctx, baseImageSource(plan.Spec)); err != nil {
				return withOfflineHint(err)
			}
		}
		return nil
	}
	if f.detach {
		// The supervisor makes its own manager: this one only answers whether a jailer of
		// firecracker's release is there, from the versions cached in the runtime root.
		mgr, err := a.manager(nil, append([]smartvm.Option{smartvm.WithFirecrackerBinary(fc)}, a.jailerOptions(fc)...)...)
		if err != nil {
			return err
		}
		err = finish(ctx, mgr, &plan)
		mgr.Close()
		if err != nil {
			return err
		}
		return a.startDetached(ctx, fc, plan)
	}
	return a.runForeground(ctx, fc, plan, finish)
}

// firecrackerForRun finds firecracker, or installs the latest release into ~/.smartvm/bin
// when there is none and noInstall is false.
func (a *app) firecrackerForRun(ctx context.Context, noInstall bool) (string, error) {
	fc, err := a.findFirecracker()
	if !errors.Is(err, errNoFirecracker) {
		return fc.Path, err
	}
	if noInstall {
		return "", fmt.Errorf("%w; --no-install keeps run from installing it", err)
	}
	fmt.Fprintln(a.stderr, "No firecracker binary found: installing the latest release (--no-install prevents this).")
	path, err := a.installLatest(ctx)
	if err != nil {
		return "", fmt.Errorf("%w; or point $%s at a firecracker binary you have", err, envFirecrackerBin)
	}
	return path, nil
}

// installLatest installs the latest Firecracker release into ~/.smartvm/bin, announcing it on
// stderr, and returns the firecracker binary's path.
func (a *app) installLatest(ctx context.Context) (string, error) {
	prog := newProgress(a.stderr)
	defer prog.finish()
	site, err := a.releaseSite(prog)
	if err != nil {
		return "", err
	}
	dir, err := a.binDir()
	if err != nil {
		return "", err
	}
	tag, err := site.Latest(ctx)
	if err != nil {
		return "", err
	}
	res, err := site.Install(ctx, tag, dir, a.stderr)
	if err != nil {
		return "", err
	}
	return res.Firecracker, nil
}

// withOfflineHint adds what to do offline to err when a download failed because the network
// is unreachable: the host name did not resolve or the connection could not be made.
func withOfflineHint(err error) error {
	var (
		de *net.DNSError
		oe *net.OpError
	)
	if !errors.As(err, &de) && !(errors.As(err, &oe) && oe.Op == "dial") {
		return err
	}
	return fmt.Errorf("%w\nhint: offline? boot the built-in test guest with --image hello, point $%s at a reachable mirror of Firecracker's CI bucket, or boot a local manifest with --image PATH", err, envCIBucketURL)
}

// startVM starts the plan's VM, or restores its snapshot. For the hello image it writes the
// test guest to a temporary file that is removed once Firecracker has loaded it. A generated
// name that is taken is replaced by another.
func startVM(ctx context.Context, mgr *smartvm.Manager, plan runPlan, opts ...smartvm.StartOption) (*smartvm.Machine, error) {
	if plan.Keep {
		opts = append(opts, smartvm.KeepExited())
	}
	if plan.Snapshot != "" {
		if plan.MemoryBackend != "" {
			opts = append(opts, smartvm.WithMemoryBackend(plan.MemoryBackend))
		}
		return restoreVM(ctx, mgr, plan.Snapshot, plan.RestoreName, opts...)
	}
	spec := plan.Spec
	if plan.Vsock && spec.Vsock == nil {
		cid, err := mgr.FreeVsockCID(ctx)
		if err != nil {
			return nil, err
		}
		spec.Vsock = &smartvm.VsockSpec{CID: cid}
	}
	if plan.Hello {
		dir, err := os.MkdirTemp("", "smartvm-hello-")
		if err != nil {
			return nil, fmt.Errorf("write the hello guest: %w", err)
		}
		defer os.RemoveAll(dir)
		spec.Kernel = filepath.Join(dir, imageHello)
		if err := testguest.Write(spec.Kernel); err != nil {
			return nil, fmt.Errorf("write the hello guest: %w", err)
		}
	}
	for attempt := 0; ; attempt++ {
		m, err := mgr.Start(ctx, spec, opts...)
		if errors.Is(err, smartvm.ErrExists) {
			if plan.GeneratedName && attempt < 10 {
				spec.Name = generateName()
				continue
			}
			if errors.Is(err, smartvm.ErrExited) {
				return nil, fmt.Errorf("the name %q is taken by a vm that exited; remove it with smartvm rm %s, or choose another --name", spec.Name, spec.Name)
			}
			return nil, fmt.Errorf("a vm called %q is already running: choose another --name, or stop it first", spec.Name)
		}
		if errors.Is(err, netdev.ErrUplinkNotFound) {
			err = fmt.Errorf("%w\nhint: name the host device that reaches the outside with --uplink DEV (see 'ip route'), or use --no-nat to reach only the host", err)
		}
		return m, err
	}
}

// agentReadyTimeout bounds run --wait-agent.
const agentReadyTimeout = 2 * time.Minute

// waitAgent waits for m's guest agent to announce itself, for run --wait-agent.
func waitAgent(ctx context.Context, m *smartvm.Machine) error {
	wctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	if _, err := m.WaitAgent(wctx); err != nil {
		if wctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("the agent of vm %s did not say it was ready within %s: does the guest run smartvm-agent? (run --agent installs it)", m.Name(), agentReadyTimeout)
		}
		return err
	}
	return nil
}

// runForeground boots the VM, shows its console until it ends, and stops it on the escape
// sequence, SIGINT or SIGTERM (ctx).
// finish, if not nil, completes the plan with the manager before the VM starts.
func (a *app) runForeground(ctx context.Context, fc string, plan runPlan, finish func(context.Context, *smartvm.Manager, *runPlan) error) error {
	prog := newProgress(a.stderr)
	images, err := a.baseImages(prog)
	if err != nil {
		return err
	}
	var notes io.Writer = a.stderr
	if isTerminal(a.stderr) {
		notes = &crlfWriter{w: a.stderr} // the console may have the terminal in raw mode
	}
	mgr, err := a.manager(images, append(append(plan.managerOptions(), smartvm.WithFirecrackerBinary(fc), stopNotifier(notes)), a.jailerOptions(fc)...)...)
	if err != nil {
		return err
	}
	defer mgr.Close()
	if finish != nil {
		if err := finish(ctx, mgr, &plan); err != nil {
			return err
		}
	}
	m, err := startVM(ctx, mgr, plan)
	prog.finish()
	if err != nil {
		return err
	}
	defer m.Close()
	if plan.WaitAgent {
		if err := waitAgent(ctx, m); err != nil {
			return err // the deferred Close kills the VM
		}
		fmt.Fprintf(a.stderr, "smartvm: the agent of vm %s is ready\n", m.Name())
	}
	var exitCodes <-chan int // with --console: the main process's, as the agent reports it
	if mp := plan.Main; mp != nil {
		if !mp.Console {
			err := a.runMain(ctx, m, mp, notes)
			return errors.Join(err, m.Close())
		}
		var stopWatch func()
		exitCodes, stopWatch = watchExit(ctx, m)
		defer stopWatch()
		if err := startMainDetached(ctx, m, mp); err != nil {
			return err // the deferred Close kills the VM
		}
	}
	end, err := a.runConsole(ctx, m, consoleSession{
		banner:     fmt.Sprintf("vm %s is running", m.Name()),
		escapeDoes: "stops it",
		stop:       func() error { return stopMachine(ctx, m, stopGrace) },
		stopNote:   fmt.Sprintf("stopping vm %s", m.Name()),
	})
	if end == endFailed {
		return err // the deferred Close kills the VM
	}
	waitErr := m.Wait(context.WithoutCancel(ctx))
	closeErr := m.Close()
	var mainErr error
	select {
	case code := <-exitCodes:
		// The main process ended (before any stop): its exit code is run's.
		if code != 0 {
			mainErr = &exitError{code: code}
		}
	default:
	}
	if end != endVM {
		if err == nil {
			err = mainErr
		}
		return errors.Join(err, closeErr) // stopped on request: the stop's result
	}
	if waitErr != nil {
		return errors.Join(fmt.Errorf("vm %s: %w", m.Name(), waitErr), closeErr)
	}
	return errors.Join(mainErr, closeErr)
}

// stopMachine stops m with the graceful ladder, detached from ctx (which may be the
// cancelled ctx that asked for the stop), within grace plus time for SIGTERM, SIGKILL and
// the cleanup.
func stopMachine(ctx context.Context, m *smartvm.Machine, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace+stopSlack)
	defer cancel()
	return m.Stop(ctx)
}
