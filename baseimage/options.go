package baseimage

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sync/singleflight"

	"github.com/smartvm/smartvm/baseimage/internal/oci"
	"github.com/smartvm/smartvm/internal/safedir"
)

// Defaults for Options fields left at their zero value.
const (
	DefaultDir               = "/tmp/.smartvm/base-images"
	DefaultKeep              = 2
	DefaultBucketURL         = "https://s3.amazonaws.com/spec.ccfc.min"
	DefaultRootfsSizeMiB     = 1024
	DefaultRootfsHeadroomMiB = 256
	DefaultRetries           = 4
	DefaultRetryBackoff      = 500 * time.Millisecond
	DefaultStallTimeout      = 30 * time.Second
	DefaultOCIMaxBytes       = oci.DefaultMaxBytes
	DefaultOCIMaxFiles       = oci.DefaultMaxEntries
)

// Architectures.
const (
	ArchX86_64  = "x86_64"
	ArchAarch64 = "aarch64"
)

// Options configure a Manager. Zero values mean the documented defaults.
type Options struct {
	// Dir is the cache directory. Default UserDefaultDir(): DefaultDir for root, a directory of
	// the user's own for anyone else. Missing directories are created with mode 0700; it and
	// every directory on the way must pass safedir's checks (no symlink, no other user's
	// directory, none that others can write but a sticky one of root's, such as /tmp).
	Dir string
	// Keep is how many bundles automatic eviction keeps after each install, the most recently
	// used first. Default DefaultKeep (2); a negative value turns automatic eviction off.
	// Bundles in use are never evicted.
	Keep int
	// BucketURL is the base URL of the Firecracker CI bucket (or a mirror), path style:
	// objects are <BucketURL>/<key> and listings <BucketURL>?list-type=2&…. Default
	// DefaultBucketURL.
	BucketURL string
	// Arch is the guest architecture, x86_64 or aarch64. Default: the host's.
	Arch string
	// HTTPClient makes every request. Default: a client without an overall timeout (stalls are
	// caught by StallTimeout) that uses no proxy; pass a client whose Transport sets Proxy to
	// use one.
	HTTPClient *http.Client
	// Logger receives Debug lines for steps, Info for installs and Warn before each eviction.
	// Default: discard.
	Logger *slog.Logger
	// Progress, if set, is called during each download, from a goroutine of the download, at
	// the start, about every MiB and at the end. It must not block for long.
	Progress func(Progress)
	// RootfsSizeMiB is the size of the ext4 image made from a squashfs rootfs. Default
	// DefaultRootfsSizeMiB (1024, as in Firecracker's getting-started guide). When the content
	// plus RootfsHeadroomMiB does not fit, the image grows to fit. The file is sparse.
	RootfsSizeMiB int
	// RootfsHeadroomMiB is the least free space the ext4 image keeps above its content.
	// Default DefaultRootfsHeadroomMiB (256).
	RootfsHeadroomMiB int
	// Retries is how many times a request that failed without progress is retried (connection
	// errors, HTTP 5xx/429/408, stalls). Default DefaultRetries; negative means none. A download
	// that made progress before its connection dropped resumes with an HTTP Range request
	// without using up a retry.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles for each further retry, up to
	// 16 times its value, with jitter. Default DefaultRetryBackoff.
	RetryBackoff time.Duration
	// StallTimeout aborts a request (then retries it) when no bytes arrive for this long; an
	// OCI registry's request, the read of a layer included, is aborted and fails the pull.
	// Default DefaultStallTimeout.
	StallTimeout time.Duration
	// AgentBinary is a static smartvm-agent that root filesystems converted from squashfs get
	// at AgentPath, with AgentUnit enabled (and OCI images as init). It must be a regular
	// file of at most 128 MiB, read whole into memory. Default: none. Bundles already in the
	// cache keep what they were converted with.
	AgentBinary string
	// Kernel is the uncompressed kernel (vmlinux) that bundles converted from OCI images
	// (Source.OCI) get, copied into each. Default: the kernel of preset latest, from its cached
	// bundle, or else downloaded alone from the bucket.
	Kernel string
	// OCIMaxBytes is the most bytes of file contents an OCI image may unpack to, summed
	// over its layers, and OCIMaxFiles the most entries (files, directories, links,
	// whiteouts) its layers may hold: a layer is a compressed stream, and a small one can
	// unpack to fill the cache's disk. An image past either fails naming the image, the layer
	// and the limit; nothing of it is cached. Zero: DefaultOCIMaxBytes (32 GiB) and
	// DefaultOCIMaxFiles (1048576); negative: no limit.
	OCIMaxBytes int64
	OCIMaxFiles int
	// Keychain supplies registry credentials for OCI images, for example
	// authn.DefaultKeychain (the docker config file, as `docker login` writes it). Default:
	// anonymous access.
	Keychain authn.Keychain
}

// Manager finds, downloads, verifies, converts and caches base-image bundles. It is safe for
// concurrent use, and several processes may share one cache directory.
type Manager struct {
	dir         string
	keep        int
	bucket      *url.URL
	arch        string
	client      *http.Client
	log         *slog.Logger
	progress    func(Progress)
	sizeMiB     int
	headMiB     int
	retries     int
	backoff     time.Duration
	stall       time.Duration
	group       singleflight.Group
	mu          sync.Mutex
	flights     map[string]*flight
	euidIsRoot  bool
	toolDirs    []string // searched for host tools after PATH
	agentBinary string
	kernel      string
	keychain    authn.Keychain
	ociLimits   oci.Limits

	rootMu sync.Mutex
	root   *safedir.Dir // the cache directory, held open once checked (see ensureDirs)
}

// HostArch returns the guest architecture matching the host: x86_64 or aarch64, or an error
// wrapping errors.ErrUnsupported on other hosts.
func HostArch() (string, error) {
	switch runtime.GOARCH {
	case "amd64":
		return ArchX86_64, nil
	case "arm64":
		return ArchAarch64, nil
	}
	return "", fmt.Errorf("host architecture %s has no Firecracker guests: %w", runtime.GOARCH, errors.ErrUnsupported)
}

// UserDefaultDir returns the cache directory Options.Dir defaults to for the calling user:
// DefaultDir for root; for any other user smartvm/base-images under os.UserCacheDir
// ($XDG_CACHE_HOME, else ~/.cache), or /tmp/.smartvm-<uid>/base-images when there is no home.
// Users never share a cache: one user's images are never another's input.
func UserDefaultDir() string {
	uid := os.Geteuid()
	if uid == 0 {
		return DefaultDir
	}
	if d, err := os.UserCacheDir(); err == nil && filepath.IsAbs(d) {
		return filepath.Join(d, "smartvm", "base-images")
	}
	return filepath.Join("/tmp", ".smartvm-"+strconv.Itoa(uid), "base-images")
}

// New returns a Manager for opts. It checks the options but does no I/O: the cache directory is
// created by the first call that writes to it.
func New(opts Options) (*Manager, error) {
	m := &Manager{
		dir: opts.Dir, keep: opts.Keep, arch: opts.Arch, client: opts.HTTPClient, log: opts.Logger,
		progress: opts.Progress, sizeMiB: opts.RootfsSizeMiB, headMiB: opts.RootfsHeadroomMiB,
		retries: opts.Retries, backoff: opts.RetryBackoff, stall: opts.StallTimeout,
		euidIsRoot: isRoot(), flights: make(map[string]*flight), toolDirs: sbinDirs(),
		agentBinary: opts.AgentBinary, kernel: opts.Kernel, keychain: opts.Keychain,
		ociLimits: oci.Limits{MaxBytes: opts.OCIMaxBytes, MaxEntries: opts.OCIMaxFiles},
	}
	if m.dir == "" {
		m.dir = UserDefaultDir()
	}
	dir, err := filepath.Abs(m.dir)
	if err != nil {
		return nil, fmt.Errorf("base image cache dir %s: %w", m.dir, err)
	}
	m.dir = dir
	if m.keep == 0 {
		m.keep = DefaultKeep
	}
	rawBucket := opts.BucketURL
	if rawBucket == "" {
		rawBucket = DefaultBucketURL
	}
	if m.bucket, err = parseHTTPURL(strings.TrimRight(rawBucket, "/")); err != nil {
		return nil, fmt.Errorf("bucket URL: %w", err)
	}
	if m.bucket.RawQuery != "" || m.bucket.Fragment != "" {
		return nil, fmt.Errorf("bucket URL %s: must not have a query or fragment", rawBucket)
	}
	if m.arch == "" {
		if m.arch, err = HostArch(); err != nil {
			return nil, fmt.Errorf("set Options.Arch: %w", err)
		}
	}
	if m.arch != ArchX86_64 && m.arch != ArchAarch64 {
		return nil, fmt.Errorf("architecture %q: want %s or %s", m.arch, ArchX86_64, ArchAarch64)
	}
	if m.client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		m.client = &http.Client{Transport: t}
	}
	if m.kernel != "" {
		if m.kernel, err = filepath.Abs(m.kernel); err != nil {
			return nil, fmt.Errorf("kernel: %w", err)
		}
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.sizeMiB == 0 {
		m.sizeMiB = DefaultRootfsSizeMiB
	}
	if m.headMiB == 0 {
		m.headMiB = DefaultRootfsHeadroomMiB
	}
	if m.sizeMiB < 0 || m.headMiB < 0 {
		return nil, errors.New("RootfsSizeMiB and RootfsHeadroomMiB must not be negative")
	}
	switch {
	case m.retries == 0:
		m.retries = DefaultRetries
	case m.retries < 0:
		m.retries = 0
	}
	if m.backoff <= 0 {
		m.backoff = DefaultRetryBackoff
	}
	if m.stall <= 0 {
		m.stall = DefaultStallTimeout
	}
	return m, nil
}

// Close releases the cache directory the Manager holds open. A closed Manager opens it again
// (checking it again) when it is next used. Close is safe to call more than once.
func (m *Manager) Close() error {
	m.rootMu.Lock()
	defer m.rootMu.Unlock()
	err := m.root.Close()
	m.root = nil
	return err
}

// Dir returns the cache directory.
func (m *Manager) Dir() string { return m.dir }

// Arch returns the architecture the manager pulls for.
func (m *Manager) Arch() string { return m.arch }

// parseHTTPURL parses an absolute http or https URL.
func parseHTTPURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: want an http or https URL", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q: no host", raw)
	}
	return u, nil
}
