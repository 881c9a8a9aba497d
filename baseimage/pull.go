package baseimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smartvm/smartvm/internal/safedir"
)

// Pull returns a verified, boot-ready bundle for src, downloading and converting it when it is
// not cached.
//
// Resolution records what the source resolved to (the exact bucket keys of a preset, the
// artifact URLs and sha256s of a hosted manifest), so a later Pull of the same preset or
// manifest URL returns the cached bundle without any network request, and works offline. If
// the bundle was evicted since, the recorded artifacts are downloaded again without listing,
// and must match their recorded sha256s. Set src.Refresh to resolve again: list the bucket or
// fetch the manifest; when the result is what was recorded, the cached bundle is still used. A
// manifest file (ManifestPath) is read again on every Pull.
//
// Concurrent Pulls of one source, in this process or in others sharing the cache directory,
// download it once. After installing, Pull evicts the least recently used bundles beyond
// Options.Keep. Errors: ErrNotFound (no such preset artifacts, HTTP 404, an unknown image,
// tag or digest), ErrChecksum, ErrInvalidManifest (a *ManifestError), ErrMissingTool,
// *HTTPError, for OCI images ErrAuth, ErrPlatform, ErrUnsupportedMediaType, ErrUnsafeLayer and
// ErrInvalidLayer, and ctx's error. On error nothing is cached.
func (m *Manager) Pull(ctx context.Context, src Source) (*Bundle, error) {
	if err := src.Validate(); err != nil {
		return nil, err
	}
	if src.ManifestPath != "" {
		abs, err := filepath.Abs(src.ManifestPath)
		if err != nil {
			return nil, fmt.Errorf("manifest path: %w", err)
		}
		src.ManifestPath = abs
	}
	key := m.refKey(src)
	if !src.Refresh && src.ManifestPath == "" {
		if b := m.cached(key); b != nil {
			m.touch(b)
			return b, nil
		}
	}
	flight := key
	if src.Refresh {
		flight += "+refresh"
	}
	for {
		b, err, retry := m.shared(ctx, flight, func(ctx context.Context) (*Bundle, error) { return m.pull(ctx, src, key) })
		if retry {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", src, err)
		}
		return b, nil
	}
}

// flight is one shared Pull: its work runs under ctx, which is cancelled only when every caller
// waiting for it has gone.
type flight struct {
	ctx     context.Context
	cancel  context.CancelCauseFunc
	waiters int
}

// shared runs fn once for concurrent callers with the same key (singleflight). A caller whose
// ctx ends stops waiting; the last one to go cancels the work and waits for it to clean up, so
// nothing it started outlives the call. retry is true when this caller joined work that another
// caller's departure cancelled.
func (m *Manager) shared(ctx context.Context, key string, fn func(context.Context) (*Bundle, error)) (_ *Bundle, _ error, retry bool) {
	m.mu.Lock()
	f := m.flights[key]
	if f == nil {
		wctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		f = &flight{ctx: wctx, cancel: cancel}
		m.flights[key] = f
	}
	f.waiters++
	m.mu.Unlock()
	ch := m.group.DoChan(key, func() (any, error) {
		defer func() {
			m.mu.Lock()
			if m.flights[key] == f {
				delete(m.flights, key)
			}
			m.mu.Unlock()
			f.cancel(nil)
		}()
		return fn(f.ctx)
	})
	leave := func() (last bool) {
		m.mu.Lock()
		defer m.mu.Unlock()
		f.waiters--
		if f.waiters == 0 && m.flights[key] == f {
			delete(m.flights, key)
		}
		return f.waiters == 0
	}
	select {
	case r := <-ch:
		leave()
		if r.Err != nil {
			if ctx.Err() == nil && f.ctx.Err() != nil && errors.Is(r.Err, context.Cause(f.ctx)) {
				return nil, nil, true
			}
			return nil, r.Err, false
		}
		b := *r.Val.(*Bundle)
		return &b, nil, false
	case <-ctx.Done():
		if leave() {
			f.cancel(context.Cause(ctx))
			<-ch // the work stops promptly and removes what it staged
		}
		return nil, context.Cause(ctx), false
	}
}

// refKey names the record of what src resolved to. It covers everything that changes the
// result: the source, the architecture, the bucket and the rootfs conversion settings.
func (m *Manager) refKey(src Source) string {
	h := sha256.New()
	for _, s := range []string{"ref/v1", m.arch, m.bucket.String(), src.Preset, src.Release, src.ManifestURL, src.ManifestPath,
		strconv.Itoa(m.sizeMiB), strconv.Itoa(m.headMiB)} {
		io.WriteString(h, s)
		h.Write([]byte{0})
	}
	if src.OCI != "" { // apart, so the keys of the other sources stay as they were
		for _, s := range []string{"oci", src.OCI, m.kernel} {
			io.WriteString(h, s)
			h.Write([]byte{0})
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// cached returns the bundle recorded for key, or nil.
func (m *Manager) cached(key string) *Bundle {
	r, err := m.readRef(key)
	if err != nil {
		return nil
	}
	b, err := m.readBundle(r.ID)
	if err != nil {
		return nil
	}
	return b
}

// pull resolves, downloads and installs src while holding src's lock.
func (m *Manager) pull(ctx context.Context, src Source, key string) (*Bundle, error) {
	if err := m.ensureDirs(); err != nil {
		return nil, err
	}
	l, err := m.lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	old, _ := m.readRef(key) // a missing or unreadable record means resolving afresh
	if old != nil && !src.Refresh && src.ManifestPath == "" {
		// Another process may have installed it while this one waited for the lock.
		if b, err := m.readBundle(old.ID); err == nil {
			m.touch(b)
			return b, nil
		}
	}
	if src.OCI != "" {
		return m.pullOCI(ctx, src, key)
	}
	var p *plan
	fromRecord := false
	switch {
	case src.Preset != "" && old != nil && !src.Refresh:
		m.log.Debug("downloading the recorded artifacts again", "source", src.String())
		p, fromRecord = planFromRef(old), true
	case src.Preset != "":
		if p, err = m.resolvePreset(ctx, src); err != nil {
			return nil, err
		}
		if old != nil && sameArtifacts(p, old) {
			p = planFromRef(old) // the same objects: their sha256s are known
		}
	case src.ManifestURL != "":
		if p, err = m.fetchManifest(ctx, src.ManifestURL); err != nil {
			return nil, err
		}
	default:
		if p, err = m.readManifestFile(src.ManifestPath); err != nil {
			return nil, err
		}
	}
	if id, ok := m.planID(p); ok {
		if b, err := m.readBundle(id); err == nil {
			if err := m.writeRef(key, m.newRef(src, id, p)); err != nil {
				return nil, err
			}
			m.touch(b)
			return b, nil
		}
	}
	b, err := m.build(ctx, src, p)
	if err != nil {
		if fromRecord && (errors.Is(err, ErrChecksum) || errors.Is(err, ErrNotFound)) {
			return nil, fmt.Errorf("%w (the artifacts recorded when this preset was first resolved, on %s, changed or vanished: pull with Refresh to resolve it again)",
				err, old.Resolved.Format(time.DateOnly))
		}
		return nil, err
	}
	if err := m.writeRef(key, m.newRef(src, b.ID, p)); err != nil {
		return nil, err
	}
	m.evict(ctx)
	return b, nil
}

// evict removes the least recently used bundles beyond Options.Keep after an install, with a
// warning for each.
func (m *Manager) evict(ctx context.Context) {
	if m.keep < 0 {
		return
	}
	err := m.withCacheLock(ctx, func() error {
		_, err := m.pruneLocked(ctx, m.keep, slog.LevelWarn)
		return err
	})
	if err != nil { // the new bundle is installed and usable: eviction is retried next time
		m.log.Warn("evicting old base images failed", "err", err)
	}
}

func (m *Manager) newRef(src Source, id string, p *plan) *ref {
	return &ref{
		Source: src.String(), ID: id, Name: p.name, BootArgs: p.bootArgs, Firecracker: p.fc,
		Format: p.format, Artifacts: p.artifacts, Resolved: time.Now().UTC(),
	}
}

func planFromRef(r *ref) *plan {
	p := &plan{name: r.Name, bootArgs: r.BootArgs, fc: r.Firecracker, format: r.Format}
	p.artifacts = append(p.artifacts, r.Artifacts...)
	for _, a := range r.Artifacts {
		u, _ := url.Parse(a.URL) // recorded from a parsed URL
		p.locs = append(p.locs, location{url: u})
	}
	return p
}

// sameArtifacts reports whether a fresh resolution names the objects recorded in r, unchanged.
func sameArtifacts(p *plan, r *ref) bool {
	if len(p.artifacts) != len(r.Artifacts) || p.name != r.Name || p.bootArgs != r.BootArgs {
		return false
	}
	for i, a := range p.artifacts {
		b := r.Artifacts[i]
		if a.Role != b.Role || a.URL != b.URL || a.Size != b.Size || a.ETag != b.ETag || a.ETag == "" || b.SHA256 == "" {
			return false
		}
	}
	return true
}

// planID derives the bundle ID from the artifacts' sha256s and the settings that shape the
// bundle; ok is false while a sha256 is still unknown (a preset before downloading).
func (m *Manager) planID(p *plan) (string, bool) {
	h := sha256.New()
	fields := []string{"bundle/v1", m.arch, p.bootArgs, p.format}
	if p.format == formatSquashfs {
		fields = append(fields, strconv.Itoa(m.sizeMiB), strconv.Itoa(m.headMiB))
	}
	for _, a := range p.artifacts {
		if a.SHA256 == "" {
			return "", false
		}
		fields = append(fields, a.Role, a.SHA256)
	}
	for _, f := range fields {
		io.WriteString(h, f)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16], true
}

// fetchManifest downloads and parses a hosted manifest.
func (m *Manager) fetchManifest(ctx context.Context, rawURL string) (*plan, error) {
	base, err := parseHTTPURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("manifest URL: %w", err)
	}
	var data []byte
	err = m.withRetries(ctx, rawURL, func(ctx context.Context) (bool, error) {
		var err error
		data, err = m.getSmall(ctx, rawURL, maxManifestSize)
		return false, err
	})
	if err != nil {
		return nil, fmt.Errorf("fetch manifest: %w", err)
	}
	return m.manifestPlan(data, rawURL, base, "")
}

// readManifestFile reads and parses a local manifest.
func (m *Manager) readManifestFile(path string) (*plan, error) {
	data, err := safedir.ReadInput(path, maxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return m.manifestPlan(data, path, nil, filepath.Dir(path))
}

// manifestPlan validates a manifest for this manager and resolves its URLs.
func (m *Manager) manifestPlan(data []byte, where string, base *url.URL, baseDir string) (*plan, error) {
	mf, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", where, err)
	}
	if mf.Arch != m.arch {
		return nil, fmt.Errorf("manifest %s: it is for %s, and this manager pulls %s (Options.Arch)", where, mf.Arch, m.arch)
	}
	p := &plan{name: mf.Name, bootArgs: mf.BootArgs, fc: mf.Firecracker, format: mf.Rootfs.Format}
	if p.bootArgs == "" {
		p.bootArgs = defaultBootArgs(m.arch)
	}
	files := []struct {
		role string
		f    *ManifestFile
	}{{roleKernel, &mf.Kernel}, {roleRootfs, &mf.Rootfs}, {roleInitrd, mf.Initrd}}
	for _, x := range files {
		if x.f == nil {
			continue
		}
		loc, err := resolveRef(base, baseDir, x.f.URL, x.role+".url")
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", where, err)
		}
		p.artifacts = append(p.artifacts, refArtifact{Role: x.role, URL: loc.String(), Size: x.f.Size, SHA256: x.f.SHA256})
		p.locs = append(p.locs, loc)
	}
	return p, nil
}

// build downloads the plan's artifacts into a staging directory, converts a squashfs rootfs,
// and installs the result.
func (m *Manager) build(ctx context.Context, src Source, p *plan) (*Bundle, error) {
	if p.format == formatSquashfs {
		if err := m.checkConvertTools(); err != nil { // fail before downloading
			return nil, err
		}
	}
	s, err := m.newStaging(ctx)
	if err != nil {
		return nil, err
	}
	defer s.discard()
	b := &Bundle{Name: p.name, Arch: m.arch, BootArgs: p.bootArgs, Source: src, Firecracker: p.fc}
	b.Source.Refresh = false
	var squashfs, squashfsName string
	for i := range p.artifacts {
		a := &p.artifacts[i]
		name := a.URL[strings.LastIndex(a.URL, "/")+1:]
		if p.locs[i].url == nil {
			name = filepath.Base(p.locs[i].path)
		}
		file := map[string]string{roleKernel: fileKernel, roleInitrd: fileInitrd, roleRootfs: fileRootfs}[a.Role]
		if a.Role == roleRootfs && p.format == formatSquashfs {
			file = "rootfs.squashfs"
			squashfs, squashfsName = filepath.Join(s.dir, file), name
		}
		req := fetchReq{name: name, loc: p.locs[i], size: a.Size, sha256: a.SHA256, etag: a.ETag}
		res, err := m.fetchAt(ctx, req, s.root, rel(dirStaging, s.name, file))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.Role, err)
		}
		a.SHA256, a.Size = res.sha256, res.size
		art := Artifact{Role: a.Role, URL: a.URL, SHA256: a.SHA256, Size: a.Size}
		if a.Role == roleRootfs {
			art.Format = p.format
		}
		b.Artifacts = append(b.Artifacts, art)
	}
	b.ID, _ = m.planID(p) // every sha256 is known now
	if existing, err := m.readBundle(b.ID); err == nil {
		m.touch(existing)
		return existing, nil
	}
	if squashfs != "" {
		if err := m.convert(ctx, s.dir, squashfs, squashfsName); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{fileKernel, fileInitrd, fileRootfs} {
		if err := os.Chmod(filepath.Join(s.dir, f), 0o444); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("make %s read-only: %w", f, err)
		}
	}
	return m.install(ctx, s, b)
}

// convert turns the downloaded squashfs into rootfs.ext4 with a fresh SSH key for root.
func (m *Manager) convert(ctx context.Context, dir, squashfs, name string) error {
	key, err := newSSHKey()
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, fileKey), key.privatePEM, 0o600); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(dir, fileKeyPub), key.authorizedKey, 0o644); err != nil {
		return err
	}
	start := time.Now()
	if err := m.convertSquashfs(ctx, name, squashfs, filepath.Join(dir, fileRootfs), filepath.Join(dir, "work"), key.authorizedKey); err != nil {
		return fmt.Errorf("convert rootfs to ext4: %w", err)
	}
	m.log.Debug("converted rootfs", "took", time.Since(start))
	if err := os.Remove(squashfs); err != nil {
		return fmt.Errorf("remove squashfs: %w", err)
	}
	return nil
}
