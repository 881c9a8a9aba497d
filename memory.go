package smartvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/safedir"
	"github.com/smartvm/smartvm/internal/uffd"
)

// MemoryBackend is how a restored VM gets its guest memory from the snapshot's memory file.
type MemoryBackend string

const (
	// MemoryFile has Firecracker map the memory file privately (MAP_PRIVATE): pages load
	// lazily, and clean pages are shared through the page cache by every VM restored from
	// the file. The default.
	MemoryFile MemoryBackend = "File"
	// MemoryUffd has Firecracker hand its guest memory's page faults to a userfaultfd page
	// server in this process, which serves them from the memory file, mapped once, with
	// zero pages for its holes and for the pages the balloon removed. One server serves
	// every VM this Manager restores from the same memory file, and ends with the last of
	// them. The VMs depend on this process: if it exits, they hang on their next fault, so
	// a Detached restore is refused.
	MemoryUffd MemoryBackend = "Uffd"
)

// memoryOptions are the StartOptions of a restore's memory backend.
type memoryOptions struct {
	backend  MemoryBackend
	prefault []int64
}

// WithMemoryBackend chooses how a restored VM gets its memory (Restore only). Default:
// MemoryFile.
func WithMemoryBackend(b MemoryBackend) StartOption {
	return func(o *startOptions) { o.memory.backend = b }
}

// WithPrefault has the MemoryUffd page server copy these pages into the VM as soon as it
// connects, before the guest touches them: a working set recorded with Machine.WorkingSet
// from an earlier restore of the same snapshot. The offsets are into the memory file; ones
// outside the guest's memory are skipped. It has effect only with MemoryUffd, and only when
// this restore starts the memory file's page server.
func WithPrefault(offsets []int64) StartOption {
	return func(o *startOptions) { o.memory.prefault = offsets }
}

// uffdSocket is the socket, in a restoring VM's directory, that Firecracker connects to
// with its userfaultfd.
const uffdSocket = "uffd.sock"

// pageServers are a Manager's userfaultfd page servers, one per memory file.
type pageServers struct {
	mu    sync.Mutex
	files map[fileKey]*pageServer
	vms   map[string]*pageServer // by the name of the VM served
}

type fileKey struct{ dev, ino uint64 }

type pageServer struct {
	key  fileKey
	srv  *uffd.Server
	refs int
}

// acquire returns the page server of the memory file at path, opening one if none serves
// it, for the VM name; release gives the VM's reference back, and closes the server with
// the last one.
func (ps *pageServers) acquire(path, name string, mo memoryOptions, log *slog.Logger) (srv *uffd.Server, release func(context.Context) error, err error) {
	f, err := safedir.OpenInput(path, false, false)
	if err != nil {
		return nil, nil, err
	}
	info, err := safedir.Stat(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	key := fileKey{dev: info.Dev, ino: info.Ino}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.files[key]
	if p == nil {
		s, err := uffd.Open(f, uffd.Options{Log: log, Prefault: mo.prefault})
		if err != nil {
			return nil, nil, err
		}
		p = &pageServer{key: key, srv: s}
		if ps.files == nil {
			ps.files, ps.vms = map[fileKey]*pageServer{}, map[string]*pageServer{}
		}
		ps.files[key] = p
	} else {
		f.Close()
	}
	p.refs++
	ps.vms[name] = p
	var once sync.Once
	release = func(context.Context) error {
		var err error
		once.Do(func() {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			if ps.vms[name] == p {
				delete(ps.vms, name)
			}
			if p.refs--; p.refs == 0 {
				delete(ps.files, p.key)
				err = p.srv.Close()
			}
		})
		return err
	}
	return p.srv, release, nil
}

// memoryInJail reports whether a jailed restore's firecracker reads the memory file itself,
// in its chroot: with MemoryUffd it stays on the host, where the page server reads it.
func (s *starter) memoryInJail() bool {
	return s.jail != nil && s.opts.memory.backend != MemoryUffd
}

// memoryBackend returns the mem_backend that loads the memory file memPath, and done, which
// the caller calls with the load's result once Firecracker has answered: with MemoryUffd,
// it reports whether Firecracker handed its userfaultfd over.
func (s *starter) memoryBackend(ctx context.Context, memPath string) (fcapi.MemoryBackend, func(loadErr error) error, error) {
	switch s.opts.memory.backend {
	case "", MemoryFile:
		return fcapi.MemoryBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath}, func(error) error { return nil }, nil
	case MemoryUffd:
	default:
		return fcapi.MemoryBackend{}, nil, fmt.Errorf("memory backend %q: use %s or %s", s.opts.memory.backend, MemoryFile, MemoryUffd)
	}
	if s.opts.detached {
		return fcapi.MemoryBackend{}, nil, fmt.Errorf("a detached VM outlives this process, which serves its memory with %s: restore it with %s: %w", MemoryUffd, MemoryFile, errors.ErrUnsupported)
	}
	srv, release, err := s.mgr.pages.acquire(memPath, s.spec.Name, s.opts.memory, s.mgr.log.With("uffd", memPath))
	if err != nil {
		return fcapi.MemoryBackend{}, nil, fmt.Errorf("serve memory file %s: %w", memPath, err)
	}
	s.push(release)
	// A jailed firecracker connects in its chroot; the memory file stays on the host, where
	// the page server reads it.
	var ln *net.UnixListener
	sock := filepath.Join(s.dir.Paths.Dir, uffdSocket)
	if s.jail != nil {
		ln, sock, err = s.listenInJail(uffdSocket)
	} else {
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	}
	if err != nil {
		return fcapi.MemoryBackend{}, nil, fmt.Errorf("listen for firecracker's userfaultfd: %w", err)
	}
	actx, cancel := context.WithCancel(ctx)
	accepted := make(chan error, 1)
	go func() { accepted <- srv.Accept(actx, ln) }()
	done := func(loadErr error) error {
		if loadErr != nil {
			cancel() // firecracker may never have connected
		}
		err := <-accepted
		cancel()
		ln.Close() // removes the socket in the VM's directory; the jail's goes with the jail
		if loadErr != nil && strings.Contains(loadErr.Error(), "Unrecognized ioctl flags") {
			// v1.7's userfaultfd crate refuses the flags newer kernels report.
			return fmt.Errorf("%w: Firecracker %s cannot use this kernel's userfaultfd (it reports ioctls newer than that release knows): restore with %s, or with a newer Firecracker: %w",
				loadErr, s.version, MemoryFile, errors.ErrUnsupported)
		}
		if loadErr != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("take firecracker's userfaultfd: %w", err)
		}
		return nil
	}
	return fcapi.MemoryBackend{BackendType: fcapi.MemBackendUffd, BackendPath: sock}, done, nil
}

// WorkingSet returns the offsets into the snapshot's memory file of the pages the MemoryUffd
// page server has served so far, to this VM and the others restored from the same file, in
// the order first served: WithPrefault for later restores. It returns an error wrapping
// ErrNotRunning when the VM has ended, and errors.ErrUnsupported when its memory is not
// served by this Manager's page server.
func (m *Machine) WorkingSet() ([]int64, error) {
	if m.exited() {
		return nil, fmt.Errorf("working set of vm %s: %w", m.name, ErrNotRunning)
	}
	ps := &m.mgr.pages
	ps.mu.Lock()
	p := ps.vms[m.name]
	ps.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("working set of vm %s: it was not restored with the %s memory backend by this process: %w", m.name, MemoryUffd, errors.ErrUnsupported)
	}
	return p.srv.WorkingSet(), nil
}
