package smartvm

import (
	"log/slog"
	"time"

	"github.com/smartvm/smartvm/baseimage"
)

// DefaultStopGracePeriod is how long Stop waits for the guest to react to Ctrl-Alt-Del
// before it escalates to SIGTERM. The smartvm command uses it for `stop`, for a foreground
// VM's escape sequence and signals, and for a detached VM's supervisor.
const DefaultStopGracePeriod = 10 * time.Second

// DefaultSerialLogLimit is how much of a VM's serial console serial.log keeps unless
// WithSerialLogLimit says otherwise.
const DefaultSerialLogLimit = 64 << 20

// DefaultFirecrackerBinary is the firecracker executable a Manager runs unless
// WithFirecrackerBinary names another: looked up in PATH.
const DefaultFirecrackerBinary = "firecracker"

// Option configures a Manager.
type Option func(*options)

type options struct {
	runtimeDir string
	binary     string
	logger     *slog.Logger
	images     *baseimage.Manager
	grace      time.Duration
	stopNotify func(StopEscalation)
	netnsDir   string
	serialMax  int64
	stagingDir string
	agent      string
	jail       jailOptions
}

// WithRuntimeDir sets the runtime root. Default, for root: /dev/shm/.smartvm/runtime when
// /dev/shm is a writable tmpfs, else .smartvm/runtime under os.TempDir() ($TMPDIR); for any
// other user, .smartvm-<uid>/runtime in the same place. Managers in several processes of one
// user may share one root. The root and every directory on the way to it must be
// trustworthy (see docs/security.md): NewManager refuses a symlink, another user's directory
// or one that others can write (except a sticky one of root's, such as /dev/shm).
func WithRuntimeDir(dir string) Option { return func(o *options) { o.runtimeDir = dir } }

// WithFirecrackerBinary sets the firecracker executable: a path, or a name looked up in PATH.
// Default: DefaultFirecrackerBinary.
func WithFirecrackerBinary(path string) Option { return func(o *options) { o.binary = path } }

// WithLogger sets the logger for lifecycle events (Info) and individual steps (Debug).
// Default: a logger that discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithBaseImages gives the manager the base-image manager that resolves the BaseImage fields
// of a MachineSpec. Default: none, and such specs are refused.
func WithBaseImages(m *baseimage.Manager) Option { return func(o *options) { o.images = m } }

// WithStopGracePeriod sets how long Machine.Stop waits for the guest to shut down after
// Ctrl-Alt-Del before sending SIGTERM (Stop's ctx can cut it shorter); 0 (or less) means no
// grace period: Stop sends SIGTERM at once, without Ctrl-Alt-Del. Default:
// DefaultStopGracePeriod.
func WithStopGracePeriod(d time.Duration) Option {
	return func(o *options) { o.grace = max(d, 0) }
}

// StopEscalation is reported when Machine.Stop (or Manager.Close) moves to a signal because
// the VM did not end in time.
type StopEscalation struct {
	// VM is the VM's name.
	VM string
	// Signal is what Stop sends now: "SIGTERM" or "SIGKILL".
	Signal string
	// Reason says why, such as "the guest ignored Ctrl-Alt-Del for 10s".
	Reason string
}

// String reads like "the guest ignored Ctrl-Alt-Del for 10s: sending SIGTERM".
func (e StopEscalation) String() string { return e.Reason + ": sending " + e.Signal }

// WithStopNotify makes Stop call fn each time it escalates to a signal, so that a program
// can tell its user why a stop takes the hard way; fn must not block. The logger also gets
// each escalation, at Info level. Default: none.
func WithStopNotify(fn func(StopEscalation)) Option { return func(o *options) { o.stopNotify = fn } }

// WithSerialLogLimit bounds each VM's serial.log, so that a chatty guest cannot fill the
// runtime directory's filesystem (tmpfs: memory): while the process that started the VM runs,
// older output is released (the file keeps its apparent size, with a hole where the old output
// was) and about the last n bytes are kept; Console and ConsoleLog start at the oldest byte
// kept. A VM started Detached outlives the bound when its starter exits (the smartvm command
// keeps a supervisor process for that). n < 0: no limit. Default (and 0):
// DefaultSerialLogLimit.
func WithSerialLogLimit(n int64) Option { return func(o *options) { o.serialMax = n } }

// WithStagingDir sets where the private copies of ephemeral drives (and of a base image's
// rootfs) are staged: a directory per VM under dir, removed with the VM. A copy costs the
// space of the data the guest can see until it is written, except where dir's filesystem
// makes reflinks (btrfs, XFS): put dir there to make copies free. On tmpfs, the default
// runtime root's filesystem, each copy costs RAM. Default: "", the VM's runtime directory.
func WithStagingDir(dir string) Option { return func(o *options) { o.stagingDir = dir } }

// WithNetnsDir sets where the network namespaces of VMs with NetworkSpec.Namespace are
// bind-mounted. Default: netdev.DefaultNetnsDir (/var/run/netns), where `ip netns` finds
// them.
func WithNetnsDir(dir string) Option { return func(o *options) { o.netnsDir = dir } }

// WithAgentBinary gives the manager the static smartvm-agent executable that specs with
// MachineSpec.Agent get installed (FindAgentBinary finds one). Default: none, and such specs
// are refused.
func WithAgentBinary(path string) Option { return func(o *options) { o.agent = path } }

// StartOption configures one Manager.Start.
type StartOption func(*startOptions)

type startOptions struct {
	detached bool
	keep     bool
	memory   memoryOptions // memory.go
}

// KeepExited keeps the VM's record once it ends, as docker keeps a container: everything the
// VM held on the host is released (process, sockets, network and address, staged drives,
// base image), but its name, spec, how it ended and its serial log (bounded by
// WithSerialLogLimit) stay in the runtime root, listed by Manager.List as StateExited, until
// Manager.Remove. Its name stays taken meanwhile. A VM that nobody watched end (its owner died,
// or it ran Detached with no Machine) is recorded by the next reap, with its exit status
// unknown. Default: everything is removed when the VM ends.
func KeepExited() StartOption { return func(o *startOptions) { o.keep = true } }

// Detached starts a VM that outlives the calling process: Firecracker runs in its own session
// with no parent-death signal. While this process runs, its Machine supervises the VM as
// usual; afterwards another process adopts it with Manager.Attach, and once it has ended the
// next Manager (or Reap) on the runtime root removes what it left. Default: owned, where
// Firecracker is killed when this process dies.
func Detached() StartOption { return func(o *startOptions) { o.detached = true } }
