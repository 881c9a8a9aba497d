package baseimage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
)

// Cache layout below Options.Dir:
//
//	bundles/<id>/           one installed bundle: meta.json, vmlinux, rootfs.ext4, [initrd],
//	                        [id_ed25519, id_ed25519.pub]; its mtime is the last use
//	refs/<key>.json         what a source resolved to: exact keys or URLs and the bundle ID
//	inuse/<id>/<holder>     in-use markers written by Use
//	staging/<rand>/         installs in progress, each with staging/<rand>.lock held
//	trash/                  bundles being deleted
//	locks/cache.lock        taken to change bundles/, inuse/ and staging/ leftovers
//	locks/<key>.lock        taken while resolving and installing one source
const (
	dirBundles = "bundles"
	dirRefs    = "refs"
	dirInUse   = "inuse"
	dirStaging = "staging"
	dirTrash   = "trash"
	dirLocks   = "locks"
)

// lockPoll is how often a waiting lock is retried.
const lockPoll = 20 * time.Millisecond

// maxMetaSize bounds what is read of meta.json and refs: a larger one is not ours.
const maxMetaSize = 1 << 20

var (
	idRE     = lazyRegexp(`^[0-9a-f]{16}$`)
	idPrefRE = lazyRegexp(`^[0-9a-f]{1,16}$`)
	holderRE = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$`)
)

// ensureDirs opens the cache directory, once, after checking every directory on the way to it
// (safedir.OpenTrusted: no symlink, no directory of another user, none that others can write
// but a sticky one of root's such as /tmp), and creates the cache layout. From then on the
// cache is only worked on relative to that open directory.
func (m *Manager) ensureDirs() error {
	_, err := m.cacheDir()
	return err
}

// cacheDir returns the open cache directory (see ensureDirs).
func (m *Manager) cacheDir() (*safedir.Dir, error) {
	m.rootMu.Lock()
	defer m.rootMu.Unlock()
	if m.root != nil {
		return m.root, nil
	}
	d, err := safedir.OpenTrusted(m.dir, true)
	if err != nil {
		if errors.Is(err, safedir.ErrUntrusted) {
			return nil, fmt.Errorf("base image cache %s: %w; remove it if you know it, or choose another cache directory (SMARTVM_BASE_IMAGE_DIR for the smartvm command, Options.Dir for the library)", m.dir, err)
		}
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	for _, sub := range []string{dirBundles, dirRefs, dirInUse, dirStaging, dirTrash, dirLocks} {
		if err := d.Mkdir(sub, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			d.Close()
			return nil, fmt.Errorf("create cache dir: %w", err)
		}
	}
	m.root = d
	return d, nil
}

// rel joins the parts of a name inside the cache directory.
func rel(elem ...string) string { return path.Join(elem...) }

func (m *Manager) path(elem ...string) string {
	return filepath.Join(append([]string{m.dir}, elem...)...)
}

// lock takes an exclusive file lock, waiting until ctx ends.
func (m *Manager) lock(ctx context.Context, name string) (*safedir.Lock, error) {
	d, err := m.cacheDir()
	if err != nil {
		return nil, err
	}
	file := rel(dirLocks, name+".lock")
	for {
		l, ok, err := d.TryLock(file, true)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", d.Join(file), err)
		}
		if ok {
			return l, nil
		}
		t := time.NewTimer(lockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock %s: %w", d.Join(file), context.Cause(ctx))
		case <-t.C:
		}
	}
}

// withCacheLock runs fn holding the cache lock.
func (m *Manager) withCacheLock(ctx context.Context, fn func() error) error {
	if err := m.ensureDirs(); err != nil {
		return err
	}
	l, err := m.lock(ctx, "cache")
	if err != nil {
		return err
	}
	defer l.Unlock()
	return fn()
}

// meta is the content of meta.json.
type meta struct {
	Version     int           `json:"version"`
	ID          string        `json:"id"`
	Name        string        `json:"name"`
	Arch        string        `json:"arch"`
	BootArgs    string        `json:"boot_args"`
	Source      Source        `json:"source"`
	Firecracker *VersionRange `json:"firecracker,omitempty"`
	Artifacts   []Artifact    `json:"artifacts"`
	Size        int64         `json:"size"`
	Created     time.Time     `json:"created"`
	OCI         *OCIImage     `json:"oci,omitempty"`
}

// readBundle loads an installed bundle. A bundle that is not installed is ErrNotFound.
func (m *Manager) readBundle(id string) (*Bundle, error) {
	d, err := m.cacheDir()
	if err != nil {
		return nil, err
	}
	dir := m.path(dirBundles, id)
	data, err := d.ReadFile(rel(dirBundles, id, fileMeta), maxMetaSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("base image %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read base image %s: %w", id, err)
	}
	var md meta
	if err := json.Unmarshal(data, &md); err != nil {
		return nil, fmt.Errorf("read base image %s: %s: %w", id, fileMeta, err)
	}
	if md.Version != metaVersion || md.ID != id {
		return nil, fmt.Errorf("read base image %s: %s has version %d and id %q", id, fileMeta, md.Version, md.ID)
	}
	st, err := d.Lstat(rel(dirBundles, id))
	if err != nil {
		return nil, fmt.Errorf("read base image %s: %w", id, err)
	}
	b := &Bundle{
		ID: md.ID, Name: md.Name, Arch: md.Arch, BootArgs: md.BootArgs, Source: md.Source,
		Firecracker: md.Firecracker, Artifacts: md.Artifacts, Size: md.Size, Created: md.Created,
		LastUsed: st.ModTime, OCI: md.OCI,
	}
	b.withDir(dir)
	if b.Holders, err = m.holders(id); err != nil {
		return nil, err
	}
	return b, nil
}

// holders lists the in-use markers of a bundle.
func (m *Manager) holders(id string) ([]string, error) {
	d, err := m.cacheDir()
	if err != nil {
		return nil, err
	}
	ents, err := d.ReadDir(rel(dirInUse, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read in-use markers of %s: %w", id, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// touch records a use of the bundle: its directory's mtime is its last use.
func (m *Manager) touch(b *Bundle) {
	now := time.Now()
	d, err := m.cacheDir()
	if err == nil {
		err = d.Chtimes(rel(dirBundles, b.ID), now)
	}
	if err != nil {
		m.log.Debug("record base image use", "id", b.ID, "err", err)
		return
	}
	b.LastUsed = now
}

// staging is an install in progress: a directory next to bundles/ and the lock that tells
// other processes it is alive.
type staging struct {
	dir  string // absolute path
	name string // its name in staging/
	root *safedir.Dir
	lock *safedir.Lock
}

// newStaging creates a staging directory, after clearing what interrupted installs left. Both
// happen under the cache lock, so cleaning never sees a staging directory whose lock is not
// yet taken.
func (m *Manager) newStaging(ctx context.Context) (*staging, error) {
	var s *staging
	err := m.withCacheLock(ctx, func() error {
		m.cleanStale()
		d, err := m.cacheDir()
		if err != nil {
			return err
		}
		name := randomHex(8)
		l, ok, err := d.TryLock(rel(dirStaging, name+".lock"), true)
		if err != nil || !ok {
			return fmt.Errorf("lock staging dir %s: %w", name, errors.Join(err, errors.New("lock busy")))
		}
		s = &staging{dir: m.path(dirStaging, name), name: name, root: d, lock: l}
		if err := d.Mkdir(rel(dirStaging, name), 0o700); err != nil {
			s.discard()
			return fmt.Errorf("create staging dir: %w", err)
		}
		return nil
	})
	return s, err
}

// discard removes the staging directory (if it was not installed) and its lock.
func (s *staging) discard() {
	s.root.RemoveAll(rel(dirStaging, s.name))
	s.root.Remove(rel(dirStaging, s.name+".lock"))
	s.lock.Unlock()
}

// cleanStale removes staging directories whose process is gone and anything in trash/.
// The caller holds the cache lock. Failures only leave wasted space, so they are logged.
func (m *Manager) cleanStale() {
	d, err := m.cacheDir()
	if err != nil {
		return
	}
	ents, _ := d.ReadDir(dirStaging)
	names := make(map[string]bool)
	for _, e := range ents {
		names[strings.TrimSuffix(e.Name(), ".lock")] = true
	}
	for name := range names {
		l, ok, err := d.TryLock(rel(dirStaging, name+".lock"), true)
		if err != nil || !ok {
			continue // its install is running
		}
		m.log.Debug("removing what an interrupted install left", "dir", m.path(dirStaging, name))
		if err := d.RemoveAll(rel(dirStaging, name)); err != nil {
			m.log.Warn("remove interrupted install", "err", err)
		}
		d.Remove(rel(dirStaging, name+".lock"))
		l.Unlock()
	}
	trash, _ := d.ReadDir(dirTrash)
	for _, e := range trash {
		if err := d.RemoveAll(rel(dirTrash, e.Name())); err != nil {
			m.log.Warn("empty cache trash", "err", err)
		}
	}
}

// install moves a complete staging directory into bundles/<b.ID>, unless that bundle is
// already there (then the staged copy is dropped and the installed one returned). It writes
// meta.json and fsyncs the files and directories first, so a crash leaves either no bundle
// or a whole one.
func (m *Manager) install(ctx context.Context, s *staging, b *Bundle) (*Bundle, error) {
	md := meta{
		Version: metaVersion, ID: b.ID, Name: b.Name, Arch: b.Arch, BootArgs: b.BootArgs,
		Source: b.Source, Firecracker: b.Firecracker, Artifacts: b.Artifacts, Created: time.Now().UTC(),
		OCI: b.OCI,
	}
	size, err := diskUsage(s.dir)
	if err != nil {
		return nil, fmt.Errorf("measure bundle: %w", err)
	}
	md.Size = size + 4096 // meta.json
	data, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", fileMeta, err)
	}
	if err := writeFileSync(filepath.Join(s.dir, fileMeta), append(data, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := syncFiles(s.dir); err != nil {
		return nil, err
	}
	var out *Bundle
	err = m.withCacheLock(ctx, func() error {
		if _, err := s.root.Lstat(rel(dirBundles, b.ID, fileMeta)); err == nil {
			m.log.Debug("bundle already installed by another source", "id", b.ID)
			out, err = m.readBundle(b.ID)
			return err
		}
		if err := s.root.Rename(rel(dirStaging, s.name), s.root, rel(dirBundles, b.ID)); err != nil {
			return fmt.Errorf("install bundle %s: %w", b.ID, err)
		}
		if err := syncDir(m.path(dirBundles)); err != nil {
			return err
		}
		var err error
		out, err = m.readBundle(b.ID)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.touch(out)
	m.log.Info("installed base image", "id", out.ID, "name", out.Name, "source", out.Source.String(), "size", out.Size)
	return out, nil
}

// ref is the record of what a source resolved to.
type ref struct {
	Version     int           `json:"version"`
	Source      string        `json:"source"`
	ID          string        `json:"id"`
	Name        string        `json:"name"`
	BootArgs    string        `json:"boot_args"`
	Firecracker *VersionRange `json:"firecracker,omitempty"`
	Format      string        `json:"format"`
	Artifacts   []refArtifact `json:"artifacts"`
	Resolved    time.Time     `json:"resolved"`
}

// refArtifact pins one artifact: its URL (for a preset, the exact bucket key) and what the
// bucket said about it, plus the sha256 verified when it was downloaded.
type refArtifact struct {
	Role   string `json:"role"`
	URL    string `json:"url"`
	Key    string `json:"key,omitempty"`
	ETag   string `json:"etag,omitempty"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (m *Manager) readRef(key string) (*ref, error) {
	d, err := m.cacheDir()
	if err != nil {
		return nil, err
	}
	data, err := d.ReadFile(rel(dirRefs, key+".json"), maxMetaSize)
	if err != nil {
		return nil, err
	}
	var r ref
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode ref %s: %w", key, err)
	}
	if r.Version != metaVersion || !idRE().MatchString(r.ID) {
		return nil, fmt.Errorf("decode ref %s: version %d, id %q", key, r.Version, r.ID)
	}
	return &r, nil
}

func (m *Manager) writeRef(key string, r *ref) error {
	r.Version = metaVersion
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ref: %w", err)
	}
	d, err := m.cacheDir()
	if err != nil {
		return err
	}
	if err := d.WriteFileAtomic(rel(dirRefs, key+".json"), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write ref: %w", err)
	}
	return nil
}

// removeLocked deletes an installed bundle. The caller holds the cache lock and has checked that
// nothing uses it. The records of what sources resolved to stay: pulling the same preset again
// downloads the same artifacts until a Refresh.
func (m *Manager) removeLocked(id string) error {
	d, err := m.cacheDir()
	if err != nil {
		return err
	}
	trash := rel(dirTrash, id+"-"+randomHex(4))
	if err := d.Rename(rel(dirBundles, id), d, trash); err != nil {
		return fmt.Errorf("remove base image %s: %w", id, err)
	}
	d.Remove(rel(dirInUse, id)) // empty: the caller checked
	if err := d.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove base image %s: %w", id, err)
	}
	return nil
}

// resolveID finds the installed bundle whose ID is id or starts with it (when unique).
func (m *Manager) resolveID(id string) (string, error) {
	if !idPrefRE().MatchString(id) {
		return "", fmt.Errorf("base image id %q: want up to 16 lowercase hex digits: %w", id, ErrNotFound)
	}
	if len(id) == 16 {
		d, err := m.cacheDir()
		if err != nil {
			return "", err
		}
		if _, err := d.Lstat(rel(dirBundles, id, fileMeta)); err != nil {
			return "", fmt.Errorf("base image %s: %w", id, ErrNotFound)
		}
		return id, nil
	}
	ids, err := m.installedIDs()
	if err != nil {
		return "", err
	}
	var match []string
	for _, c := range ids {
		if strings.HasPrefix(c, id) {
			match = append(match, c)
		}
	}
	switch len(match) {
	case 0:
		return "", fmt.Errorf("base image %s: %w", id, ErrNotFound)
	case 1:
		return match[0], nil
	}
	return "", fmt.Errorf("base image id prefix %s is ambiguous: it matches %s", id, strings.Join(match, ", "))
}

func (m *Manager) installedIDs() ([]string, error) {
	d, err := m.cacheDir()
	if err != nil {
		return nil, err
	}
	ents, err := d.ReadDir(dirBundles)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list base images: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if idRE().MatchString(e.Name()) && e.Type().IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// List returns the installed bundles, the most recently used first.
func (m *Manager) List(ctx context.Context) ([]Bundle, error) {
	ids, err := m.installedIDs()
	if err != nil {
		return nil, err
	}
	var out []Bundle
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := m.readBundle(id)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b Bundle) int { return b.LastUsed.Compare(a.LastUsed) })
	return out, nil
}

// Get returns the installed bundle with the given ID or unique ID prefix, or ErrNotFound. It
// does not count as a use.
func (m *Manager) Get(ctx context.Context, id string) (*Bundle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	full, err := m.resolveID(id)
	if err != nil {
		return nil, err
	}
	return m.readBundle(full)
}

// Remove deletes the bundle with the given ID or unique ID prefix. It returns ErrNotFound when
// there is none and ErrInUse when a holder uses it.
func (m *Manager) Remove(ctx context.Context, id string) error {
	return m.withCacheLock(ctx, func() error {
		full, err := m.resolveID(id)
		if err != nil {
			return err
		}
		hs, err := m.holders(full)
		if err != nil {
			return err
		}
		if len(hs) > 0 {
			return fmt.Errorf("remove base image %s: %w by %s", full, ErrInUse, strings.Join(hs, ", "))
		}
		return m.removeLocked(full)
	})
}

// Prune evicts bundles until at most keep remain, the least recently used first, and returns
// the evicted ones. Bundles in use are never evicted, so more than keep may remain. The
// caller asked for the removals and gets them back, so each is logged at Info only; the
// eviction that follows a Pull warns instead.
func (m *Manager) Prune(ctx context.Context, keep int) ([]Bundle, error) {
	if keep < 0 {
		return nil, fmt.Errorf("prune: keep is %d, want 0 or more", keep)
	}
	var evicted []Bundle
	err := m.withCacheLock(ctx, func() error {
		m.cleanStale()
		var err error
		evicted, err = m.pruneLocked(ctx, keep, slog.LevelInfo)
		return err
	})
	return evicted, err
}

// pruneLocked evicts bundles beyond keep, logging each eviction at level.
func (m *Manager) pruneLocked(ctx context.Context, keep int, level slog.Level) ([]Bundle, error) {
	all, err := m.List(ctx)
	if err != nil {
		return nil, err
	}
	var evicted []Bundle
	for i, b := range all {
		if i < keep {
			continue
		}
		if len(b.Holders) > 0 {
			m.log.Debug("not evicting a base image in use", "id", b.ID, "name", b.Name, "holders", b.Holders)
			continue
		}
		m.log.Log(ctx, level, "evicting base image", "id", b.ID, "name", b.Name, "last_used", b.LastUsed, "size", b.Size, "keep", keep)
		if err := m.removeLocked(b.ID); err != nil {
			return evicted, err
		}
		evicted = append(evicted, b)
	}
	return evicted, nil
}

// Use records that holder (for example a VM name) uses the bundle, so that it is neither
// evicted nor removed until release is called. The marker is a file in the cache, so it
// protects the bundle from other processes too, and outlives this process if release is never
// called (a detached VM); another process can drop it with Release. Using a bundle counts as a
// use for eviction. release may be called more than once, from any goroutine: later calls
// return the first one's result. Use returns ErrNotFound when the bundle is not installed.
func (m *Manager) Use(ctx context.Context, id, holder string) (release func() error, err error) {
	if !holderRE().MatchString(holder) {
		return nil, fmt.Errorf("base image holder %q: want 1 to 128 of A-Z a-z 0-9 . _ @ : + -, starting with a letter or digit", holder)
	}
	var full string
	err = m.withCacheLock(ctx, func() error {
		if full, err = m.resolveID(id); err != nil {
			return err
		}
		d, err := m.cacheDir()
		if err != nil {
			return err
		}
		if err := d.Mkdir(rel(dirInUse, full), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("mark base image %s in use: %w", full, err)
		}
		marker := fmt.Sprintf("{\"holder\":%q,\"pid\":%d,\"since\":%q}\n", holder, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
		if err := d.WriteFileAtomic(rel(dirInUse, full, holder), []byte(marker), 0o600); err != nil {
			return fmt.Errorf("mark base image %s in use: %w", full, err)
		}
		b, err := m.readBundle(full)
		if err != nil {
			return err
		}
		m.touch(b)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sync.OnceValue(func() error { return m.Release(context.WithoutCancel(ctx), full, holder) }), nil
}

// Release drops holder's in-use marker on the bundle with the given ID, for a process other
// than the one that called Use (for example one that reaps a dead VM). Releasing a marker that
// is not there is not an error.
func (m *Manager) Release(ctx context.Context, id, holder string) error {
	if !idRE().MatchString(id) || !holderRE().MatchString(holder) {
		return fmt.Errorf("release base image %q for %q: malformed id or holder", id, holder)
	}
	return m.withCacheLock(ctx, func() error {
		d, err := m.cacheDir()
		if err != nil {
			return err
		}
		err = d.Remove(rel(dirInUse, id, holder))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release base image %s: %w", id, err)
		}
		d.Remove(rel(dirInUse, id)) // only when empty
		return nil
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// writeFileSync writes a file and fsyncs it.
func writeFileSync(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// syncDir fsyncs a directory so that renames into it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// syncFiles fsyncs every file in dir, then dir itself.
func syncFiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
	}
	return syncDir(dir)
}

// diskUsage sums the allocated size of the regular files below dir.
func diskUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += allocated(info)
		return nil
	})
	return total, err
}
