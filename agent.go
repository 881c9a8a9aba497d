package smartvm

import (
	"context"
	"io/fs"
	"net"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// Vsock ports of the guest agent (smartvm-agent), by convention. The agent listens on
// AgentPort in the guest; it connects to the host on AgentHostPort (the host socket
// "<vsock path>_<AgentHostPort>") to say that it is ready and to take the host's clock.
const (
	AgentPort     = agentwire.AgentPort
	AgentHostPort = agentwire.HostPort
)

// AgentMainBootArg is the kernel command line argument that makes the agent, as the guest's
// init, wait for the host to start the main process (MachineSpec.AgentMain).
const AgentMainBootArg = agentwire.MainWaitArg

// Agent is a client of a guest agent (smartvm-agent): it runs commands and copies files in the
// guest. Its calls share one connection, opened on first use and again when it breaks. An Agent
// is safe for concurrent use; Close releases its connection.
type Agent struct {
	c *agentwire.Client
}

// NewAgent returns an Agent whose connections come from dial, for any transport that reaches
// the agent (a vsock connection through Firecracker, a socket forwarded from elsewhere).
func NewAgent(dial func(ctx context.Context) (net.Conn, error)) *Agent {
	return &Agent{c: agentwire.NewClient(dial)}
}

// DialAgent returns an Agent at addr: "unix:PATH" or "tcp:HOST:PORT", where smartvm-agent
// listens when started with --listen. Nothing is dialled before the first call.
func DialAgent(addr string) (*Agent, error) {
	dial, err := agentwire.ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	return &Agent{c: agentwire.NewClient(dial)}, nil
}

// Close closes the Agent's idle connection. Calls in progress are not interrupted.
func (a *Agent) Close() error { return a.c.Close() }

// AgentInfo is what an agent says about itself.
type AgentInfo struct {
	// Version is the agent's build version.
	Version string `json:"version"`
	// PID1 is set when the agent is the guest's init.
	PID1 bool `json:"pid1"`
	// Hostname is the guest's host name.
	Hostname string `json:"hostname"`
	// Started is when the agent started, by the guest's clock.
	Started time.Time `json:"started"`
}

// Ping checks that the agent answers, and returns what it says about itself. Bound the wait
// with ctx: a guest without an agent never answers.
func (a *Agent) Ping(ctx context.Context) (AgentInfo, error) {
	h, err := a.c.Health(ctx)
	if err != nil {
		return AgentInfo{}, err
	}
	return AgentInfo(h), nil
}

// CopyTo copies the local file or directory src into the guest as cp -a and docker cp do:
// into dst when dst is an existing directory, else to the new name dst in an existing
// directory. Modes, owners, times, symlinks and hard links are kept. Device files, FIFOs and
// sockets are refused. The agent refuses a tree past opts' limits; KeepOwner does not apply.
func (a *Agent) CopyTo(ctx context.Context, src, dst string, opts CopyOptions) error {
	return a.c.CopyTo(ctx, src, dst, opts.limits())
}

// Default limits of one copy (CopyOptions.MaxBytes and MaxFiles).
const (
	DefaultCopyMaxBytes = agentwire.DefaultMaxBytes
	DefaultCopyMaxFiles = agentwire.DefaultMaxFiles
)

// CopyOptions tune CopyFrom and CopyTo.
type CopyOptions struct {
	// KeepOwner gives the copies the owners they have in the guest, and keeps setuid and
	// setgid bits (CopyFrom only). Zero value: the copies belong to the calling process,
	// without those bits (what a guest sends is not trusted with them).
	KeepOwner bool
	// MaxBytes is the most bytes of file contents one copy writes, and MaxFiles the most
	// entries (files, directories, links): a copy out of a guest is written by the guest,
	// which must not fill this host's disk. A copy past either fails with an error that
	// names the limit, and removes what it created. Zero: DefaultCopyMaxBytes (16 GiB) and
	// DefaultCopyMaxFiles (1048576); negative: no limit.
	MaxBytes int64
	MaxFiles int
}

func (o CopyOptions) limits() agentwire.Limits {
	return agentwire.Limits{MaxBytes: o.MaxBytes, MaxFiles: o.MaxFiles}
}

// CopyFrom copies the guest file or directory src to the local dst, the same way as CopyTo.
// Nothing the guest sends is written outside dst: entries with ".." or absolute names and
// writes through symlinks that leave dst are refused, and so is a tree past opts' limits. A
// missing src gives an error matching fs.ErrNotExist.
func (a *Agent) CopyFrom(ctx context.Context, src, dst string, opts CopyOptions) error {
	return a.c.CopyFrom(ctx, src, dst, opts.KeepOwner, opts.limits())
}

// GuestFileInfo describes a file in the guest.
type GuestFileInfo = agentwire.FileInfo

// Stat describes the guest path p (absolute, without ".."), not following a final symlink.
// A missing path gives an error matching fs.ErrNotExist. The answer comes from the guest and
// is checked: Name is p's last element, Size and the owner are numbers a file can have, and
// Link (a symlink's target, at most 4095 bytes) has its control characters and bytes that
// are not UTF-8 escaped (\xNN), so it is safe to print; any other answer is an error that
// says the agent is broken or not smartvm's.
func (a *Agent) Stat(ctx context.Context, p string) (GuestFileInfo, error) {
	return a.c.Stat(ctx, p)
}

// Mkdir creates the guest directory p with mode perm (0: 0755), and its missing parents
// with parents. An existing p gives an error matching fs.ErrExist.
func (a *Agent) Mkdir(ctx context.Context, p string, perm fs.FileMode, parents bool) error {
	return a.c.Mkdir(ctx, p, perm, parents)
}

// Remove removes the guest path p; a non-empty directory only with recursive.
func (a *Agent) Remove(ctx context.Context, p string, recursive bool) error {
	return a.c.Remove(ctx, p, recursive)
}
