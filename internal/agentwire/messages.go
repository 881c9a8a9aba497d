package agentwire

import (
	"fmt"
	"io/fs"
	"path"
	"time"
)

// Vsock ports, by convention. The agent listens on AgentPort in the guest; when it starts (and
// again after a snapshot restore) it connects to the host (CID 2) on HostPort, which
// Firecracker forwards to the Unix socket "<vsock uds_path>_<HostPort>" on the host.
const (
	AgentPort uint32 = 10700
	HostPort  uint32 = 10701
)

// Procedures, as Connect paths.
const (
	Service      = "smartvm.agent.v1.Agent"
	ProcExec     = "/" + Service + "/Exec"
	ProcUpload   = "/" + Service + "/Upload"
	ProcDownload = "/" + Service + "/Download"
	ProcStat     = "/" + Service + "/Stat"
	ProcMkdir    = "/" + Service + "/Mkdir"
	ProcRemove   = "/" + Service + "/Remove"
	ProcHealth   = "/" + Service + "/Health"
	ProcMain     = "/" + Service + "/Main"
)

// ExecStart is the first message of an Exec call: what to run.
type ExecStart struct {
	// Args is the command and its arguments; Args[0] is looked up in the PATH of Env (or the
	// default PATH) unless it contains a slash. Required.
	Args []string `json:"args"`
	// Env is added to the agent's default environment (PATH, HOME, TERM for a TTY), KEY=VALUE
	// entries, later ones winning.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; "" is the user's home directory, else /.
	Dir string `json:"dir,omitempty"`
	// User is a user name, a uid, or uid:gid (names allowed on both sides); "" is root.
	User string `json:"user,omitempty"`
	// TTY runs the command on a new pseudo-terminal of Rows x Cols (zero: 24x80); stdout then
	// carries everything it writes and there is no separate stderr.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin says that the client will send stdin; without it the command's stdin is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
}

// ExecIn is a message from the client in an Exec or Main call. The first one has Start (Exec)
// or Main (Main); later ones carry stdin bytes, the end of stdin, a signal or a window size.
type ExecIn struct {
	Start      *ExecStart `json:"start,omitempty"`
	Main       *MainStart `json:"main,omitempty"`
	CloseStdin bool       `json:"close_stdin,omitempty"`
	// Signal is a signal number to send to the command (its process group with a TTY).
	Signal int      `json:"signal,omitempty"`
	Resize *WinSize `json:"resize,omitempty"`
	Stdin  []byte   `json:"-"`
}

func (m *ExecIn) payload() *[]byte { return &m.Stdin }

// WinSize is a terminal size in characters.
type WinSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Output streams of ExecOut.
const (
	Stdout = 1
	Stderr = 2
)

// ExecOut is a message from the agent in an Exec call: first Started (or Exit when the command
// cannot start), then output, then Exit.
type ExecOut struct {
	Started *Started    `json:"started,omitempty"`
	Exit    *ExitStatus `json:"exit,omitempty"`
	// Stream says which output Data is: Stdout or Stderr.
	Stream int    `json:"stream,omitempty"`
	Data   []byte `json:"-"`
}

func (m *ExecOut) payload() *[]byte { return &m.Data }

// Started says the command runs, with this pid in the guest.
type Started struct {
	PID int `json:"pid"`
}

// ExitStatus is how a command ended. A command that could not start has Code 127 (not found)
// or 126 (not executable, bad user or directory) and Error saying why.
type ExitStatus struct {
	Code int `json:"code"`
	// Signal is the number of the signal that killed the command, 0 if it exited.
	Signal int    `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// checked returns s as the host keeps it: s comes from the guest, so a code or signal no
// process has reads as code 255 (as a shell reports an exit status it cannot represent),
// and Error is made safe to show (GuestText).
func (s *ExitStatus) checked() ExitStatus {
	c := *s
	if c.Code < 0 || c.Code > 255 || c.Signal < 0 || c.Signal > 127 {
		c.Code, c.Signal = 255, 0
	}
	c.Error = GuestText(c.Error)
	return c
}

// ProcUpload is not a Connect procedure: its request is a plain HTTP POST whose body is the
// tar stream, with the destination and limits in the query (UploadQuery...), so that the
// bytes go from the socket to the files without messages to copy them through (a Connect
// stream copied each byte about eight times). The answer is UploadResult as JSON, or, with
// an HTTP error status, a CallError.
const TarContentType = "application/x-tar"

// Query parameters of ProcUpload: the destination directory in the guest (it must exist),
// and Limits (absent: the defaults).
const (
	UploadQueryDir      = "dir"
	UploadQueryMaxBytes = "max_bytes"
	UploadQueryMaxFiles = "max_files"
)

// CallError is the body of a failed upload or download, as Connect writes errors of unary
// calls: {"code": "not_found", "message": "..."}.
type CallError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// UploadResult is the answer of a successful upload.
type UploadResult struct {
	Files int `json:"files"`
}

// ProcDownload is a plain HTTP GET too, of the tar stream of the path in the query
// (DownloadQueryPath): a file, or a directory with its whole tree, under the entry name
// base(path). A failure before the stream begins is a CallError with an HTTP error status;
// one after it (a file that changed size, a FIFO in the tree) ends the stream early and
// comes in the trailer DownloadErrorTrailer.
const (
	DownloadQueryPath    = "path"
	DownloadErrorTrailer = "Smartvm-Error"
)

// PathRequest names a path in the guest: absolute, without "..".
type PathRequest struct {
	Path string `json:"path"`
	// Recursive: Remove removes a directory's tree; Mkdir creates missing parents.
	Recursive bool `json:"recursive,omitempty"`
	// Mode is Mkdir's permission bits (zero: 0755).
	Mode uint32 `json:"mode,omitempty"`
}

// FileInfo describes a file in the guest (lstat).
type FileInfo struct {
	// Name is the last element of the path asked about (path.Base), as the agent answers:
	// the client refuses an answer for another name.
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Mode    fs.FileMode `json:"mode"`
	ModTime time.Time   `json:"mtime"`
	UID     int         `json:"uid"`
	GID     int         `json:"gid"`
	// Link is a symlink's target, at most MaxLinkTarget bytes, made safe to show by the
	// client (GuestText: control characters and bytes that are not UTF-8 escaped).
	Link string `json:"link,omitempty"`
}

// MaxLinkTarget is the longest symlink target a Stat answer may give: Linux's PATH_MAX less
// its NUL.
const MaxLinkTarget = 4095

// maxOwnerID is the largest uid or gid a file can have ((uid_t)-1 means none).
const maxOwnerID = 1<<32 - 2

// checked returns fi, the agent's answer to a Stat of p, as the host keeps it. The answer
// comes from the guest: one that no lstat of p gives (another name, a negative size, an
// owner no file has, a link target on a file that is no symlink, or one longer than
// MaxLinkTarget) is refused, and the link target is made safe to show (GuestText).
func (fi *FileInfo) checked(p string) (FileInfo, error) {
	c := *fi
	var bad string
	switch {
	case c.Name != path.Base(p):
		bad = fmt.Sprintf("it describes %q, not %q", GuestText(c.Name), GuestText(path.Base(p)))
	case c.Size < 0:
		bad = fmt.Sprintf("a size of %d bytes", c.Size)
	case c.UID < 0 || c.UID > maxOwnerID || c.GID < 0 || c.GID > maxOwnerID:
		bad = fmt.Sprintf("owner %d:%d, want numbers from 0 to %d", c.UID, c.GID, int64(maxOwnerID))
	case c.Link != "" && c.Mode&fs.ModeSymlink == 0:
		bad = "a link target on a file that is not a symlink"
	case len(c.Link) > MaxLinkTarget:
		bad = fmt.Sprintf("a link target of %d bytes, more than the %d a symlink holds", len(c.Link), MaxLinkTarget)
	}
	if bad != "" {
		return FileInfo{}, fmt.Errorf("agent stat %s: the agent's answer is not one lstat gives (%s): the agent is broken or not smartvm's", GuestText(p), bad)
	}
	c.Link = GuestText(c.Link)
	return c, nil
}

// Empty is the message of calls with nothing to say.
type Empty struct{}

// Health is the agent's answer to a health check.
type Health struct {
	Version string `json:"version"`
	// PID1 says the agent is the guest's init.
	PID1     bool      `json:"pid1"`
	Hostname string    `json:"hostname"`
	Started  time.Time `json:"started"`
}

// Hello is what the agent sends on its connection to the host (HostPort), one JSON object per
// line: {"event":"ready",...} when it serves, {"event":"exit","code":N} when the entrypoint it
// runs as PID 1 ended. The host answers each line with a TimeSync line.
type Hello struct {
	Event   string `json:"event"`
	Version string `json:"version,omitempty"`
	PID1    bool   `json:"pid1,omitempty"`
	Code    *int   `json:"code,omitempty"`
}

// TimeSync is the host's answer to a Hello: its clock, which the agent sets the guest's to
// (clones restored from a snapshot would otherwise run with the snapshot's time).
type TimeSync struct {
	UnixNano int64 `json:"unix_nano"`
}

// MMDS: where the host tells an agent that runs as PID 1 how to set up the guest's network,
// when the kernel command line has no static ip= argument. The host puts
// {"smartvm": {"network": MMDSNetwork}} into the microVM metadata service; the agent brings
// up eth0 with a link-local address (MMDSGuestAddr, or MMDSGuestAddrAlt when the service
// uses that one), reads /smartvm/network from the service (V2 session token when it gives
// one) and applies it. The kernel argument "smartvm.mmds=ADDR" names the service's address
// (default MMDSDefaultAddr); "smartvm.mmds=off" skips MMDS.
const (
	MMDSKey          = "smartvm"
	MMDSNetworkPath  = "/" + MMDSKey + "/network"
	MMDSKernelArg    = "smartvm.mmds"
	MMDSDefaultAddr  = "169.254.169.254"
	MMDSGuestAddr    = "169.254.0.1"
	MMDSGuestAddrAlt = "169.254.0.2"
)

// MMDSNetwork is the network an agent applies from MMDS. Every field is a string so that it
// reads the same in JSON and in the IMDS text format (MMDS imds_compat).
type MMDSNetwork struct {
	// Address is the guest's IPv4 address with its prefix length: "172.16.0.2/30". Required.
	Address string `json:"address"`
	// Gateway is the default route's IPv4 gateway. Empty: no default route.
	Gateway string `json:"gateway,omitempty"`
	// DNS is up to 3 name server addresses, separated by spaces, for /etc/resolv.conf.
	// Empty: resolv.conf is left alone.
	DNS string `json:"dns,omitempty"`
	// Hostname is the guest's host name (RFC 1123, at most 64 bytes). Empty: unchanged; an
	// init config's hostname wins over it.
	Hostname string `json:"hostname,omitempty"`
	// Device is the interface to configure. Empty: eth0.
	Device string `json:"device,omitempty"`
}
