package baseimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/smartvm/smartvm/baseimage/internal/oci"
	"github.com/smartvm/smartvm/internal/safedir"
)

// InitConfigPath is where a rootfs converted from an OCI image holds the image's config
// (ImageConfig as JSON) for the guest agent, which runs as init.
const InitConfigPath = "/etc/smartvm/init.json"

// formatOCI is the rootfs format recorded for bundles converted from OCI images.
const formatOCI = "oci"

// Bounds on what an image's manifest may ask for (go-containerregistry bounds the manifest
// itself).
const (
	maxLayers     = 1024
	maxConfigSize = 8 << 20
)

// roleImage is the artifact role of an OCI image's manifest in a bundle's Artifacts.
const roleImage = "image"

// parseOCIRef parses an OCI image reference, with Docker Hub as the default registry.
func parseOCIRef(s string) (name.Reference, error) {
	r, err := name.ParseReference(s)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", s, err)
	}
	return r, nil
}

// ErrHelloImage is what ParseImageArg returns for "hello", the smartvm command's built-in
// test guest, which is no base image.
var ErrHelloImage = errors.New("hello is the built-in test guest, not a base image")

// ParseImageArg turns an image argument into a Source. It tries, in order:
//
//  1. "hello": ErrHelloImage (the caller boots its built-in guest);
//  2. the presets "latest" and "lts";
//  3. a manifest: an existing file (made absolute), or an http(s) URL ending in ".json" (a
//     name ending in ".json" that is no file is an error, not an image reference);
//  4. an OCI image reference: "alpine", "alpine:3.20", "ghcr.io/o/i@sha256:…",
//     "localhost:5000/img:tag".
//
// Anything else is an error that says what the forms are.
func ParseImageArg(s string) (Source, error) {
	switch {
	case s == "":
		return Source{}, errors.New("empty image: want latest, lts, a manifest file or URL, or an OCI image reference such as alpine:3.20")
	case s == "hello":
		return Source{}, ErrHelloImage
	case s == PresetLatest || s == PresetLTS:
		return Source{Preset: s}, nil
	}
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		src := Source{ManifestURL: s}
		if u, err := parseHTTPURL(s); err != nil || !strings.HasSuffix(u.Path, ".json") {
			return Source{}, fmt.Errorf("image %q: an http(s) image is a manifest URL, whose path ends in .json", s)
		}
		return src, nil
	}
	if st, err := os.Stat(s); err == nil {
		if st.IsDir() {
			return Source{}, fmt.Errorf("image %q is a directory: want a manifest file", s)
		}
		abs, err := filepath.Abs(s)
		if err != nil {
			return Source{}, fmt.Errorf("manifest path: %w", err)
		}
		return Source{ManifestPath: abs}, nil
	}
	if strings.HasSuffix(s, ".json") {
		return Source{}, fmt.Errorf("image %q: no such manifest file (a name ending in .json is taken for a manifest, not an OCI image)", s)
	}
	if _, err := parseOCIRef(s); err != nil {
		return Source{}, fmt.Errorf("image %q is not latest, lts, an existing manifest file, an http(s) manifest URL ending in .json, or an OCI image reference (%w)", s, err)
	}
	return Source{OCI: s}, nil
}

// Errors of OCI pulls, besides ErrNotFound (an unknown repository, tag or digest) and
// ErrChecksum (a blob whose digest or size does not match).
var (
	// ErrAuth reports a registry that refused the credentials (or their absence).
	ErrAuth = errors.New("registry authentication failed")
	// ErrUnsupportedMediaType reports a manifest, config or layer of a kind smartvm cannot
	// turn into a root filesystem.
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	// ErrPlatform reports an image that has no variant for this host's platform.
	ErrPlatform = errors.New("no image for this platform")
	// ErrUnsafeLayer reports a layer entry that would write outside the root filesystem
	// (a ".." element, an absolute name, a path through a symlink).
	ErrUnsafeLayer = oci.ErrUnsafe
	// ErrInvalidLayer reports a layer entry that cannot be in a root filesystem (unsupported
	// type, bad name, beyond the limits).
	ErrInvalidLayer = oci.ErrInvalid
	// ErrImageTooLarge reports an image that unpacks to more than Options.OCIMaxBytes or
	// holds more than Options.OCIMaxFiles entries.
	ErrImageTooLarge = oci.ErrLimit
)

// ociPlatform is the platform this manager pulls: linux and the guest architecture.
func (m *Manager) ociPlatform() v1.Platform {
	if m.arch == ArchAarch64 {
		return v1.Platform{OS: "linux", Architecture: "arm64"}
	}
	return v1.Platform{OS: "linux", Architecture: "amd64"}
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// remoteOptions are the registry client's options: the manager's HTTP transport (its proxy)
// with Options.StallTimeout on every request, the keychain, and ctx.
func (m *Manager) remoteOptions(ctx context.Context) []remote.Option {
	var tr http.RoundTripper = stallTransport{m: m, next: m.client.Transport}
	kc := m.keychain
	if kc == nil {
		kc = authn.NewMultiKeychain() // anonymous
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(m.ociPlatform()), remote.WithUserAgent("smartvm")}
}

// stallTransport ends a registry request, and the read of its body, once no bytes arrive
// for Options.StallTimeout, as downloads from a bucket or manifest URL do: a registry that
// stops answering fails the pull instead of holding it forever.
type stallTransport struct {
	m    *Manager
	next http.RoundTripper // nil: http.DefaultTransport
}

func (t stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	next := t.next
	if next == nil {
		next = http.DefaultTransport
	}
	ctx, w := t.m.newWatchdog(req.Context())
	resp, err := next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		w.stop()
		return nil, w.wrap(err)
	}
	resp.Body = &watchedBody{r: w.reader(resp.Body), body: resp.Body, w: w}
	return resp, nil
}

// watchedBody is a response body under a watchdog, which its reads push back and its Close
// stops.
type watchedBody struct {
	r    io.Reader
	body io.ReadCloser
	w    *watchdog
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, err
	}
	return n, b.w.wrap(err)
}

func (b *watchedBody) Close() error {
	b.w.stop()
	return b.body.Close()
}

// registryError turns a registry client error into one of ours.
func registryError(ref name.Reference, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w for %s: %w; log in with `docker login %s` (smartvm reads the docker config), or check the image name",
				ErrAuth, ref, err, ref.Context().RegistryStr())
		case http.StatusNotFound:
			return fmt.Errorf("image %s: %w: the registry knows no such repository, tag or digest (%w)", ref, ErrNotFound, err)
		}
	}
	return fmt.Errorf("image %s: %w", ref, err)
}

// ociResolved is an OCI image picked for this platform, and once read, its config.
type ociResolved struct {
	img      v1.Image
	digest   v1.Hash
	platform string
	config   *v1.ConfigFile
	rawCfg   []byte
}

// resolveOCI fetches the manifest of ref (choosing this platform from an index) and its
// config, and checks every media type.
func (m *Manager) resolveOCI(ctx context.Context, ref name.Reference) (*ociResolved, error) {
	opts := m.remoteOptions(ctx)
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return nil, registryError(ref, err)
	}
	want := m.ociPlatform()
	var img v1.Image
	switch desc.MediaType {
	case types.OCIImageIndex, types.DockerManifestList:
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, registryError(ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, registryError(ref, err)
		}
		var have []string
		var pick *v1.Descriptor
		for i := range im.Manifests {
			d := &im.Manifests[i]
			if d.Platform == nil || d.Platform.OS == "unknown" { // attestations
				continue
			}
			have = append(have, platformString(*d.Platform))
			if d.Platform.OS != want.OS || d.Platform.Architecture != want.Architecture {
				continue
			}
			v := d.Platform.Variant
			switch {
			case want.Architecture == "arm64" && v != "" && v != "v8":
				// Not a variant of arm64 this host runs.
			case baselineVariant(v):
				// The baseline build runs on every CPU of the architecture: it wins over an
				// amd64/v3 listed before it, which older CPUs cannot run.
				if pick == nil || !baselineVariant(pick.Platform.Variant) {
					pick = d
				}
			case pick == nil:
				pick = d
			}
		}
		if pick == nil {
			return nil, fmt.Errorf("image %s: %w %s: it has %s", ref, ErrPlatform, platformString(want), orNone(have))
		}
		if pick.MediaType != types.OCIManifestSchema1 && pick.MediaType != types.DockerManifestSchema2 {
			return nil, fmt.Errorf("image %s: %w: the %s manifest is %s", ref, ErrUnsupportedMediaType, platformString(want), pick.MediaType)
		}
		if img, err = idx.Image(pick.Digest); err != nil {
			return nil, registryError(ref, err)
		}
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
		if img, err = desc.Image(); err != nil {
			return nil, registryError(ref, err)
		}
	default:
		return nil, fmt.Errorf("image %s: %w: the manifest is %s (want an OCI or Docker v2 image manifest or index)", ref, ErrUnsupportedMediaType, desc.MediaType)
	}
	dg, err := img.Digest()
	if err != nil {
		return nil, registryError(ref, err)
	}
	return &ociResolved{img: img, digest: dg, platform: platformString(want)}, nil
}

// baselineVariant reports whether an image index's platform variant names the baseline
// build of its architecture (none, amd64's v1, arm64's v8).
func baselineVariant(v string) bool { return v == "" || v == "v1" || v == "v8" }

// readConfig checks the image's config and layer media types, and reads its config.
func (m *Manager) readConfig(ref name.Reference, res *ociResolved) error {
	img, want := res.img, m.ociPlatform()
	mf, err := img.Manifest()
	if err != nil {
		return registryError(ref, err)
	}
	if len(mf.Layers) > maxLayers {
		return fmt.Errorf("image %s has %d layers, more than the %d smartvm accepts", ref, len(mf.Layers), maxLayers)
	}
	// A size of -1 would turn off go-containerregistry's bound on the read (the registry's
	// Content-Length, if any, would be the only limit).
	if mf.Config.Size < 0 || mf.Config.Size > maxConfigSize {
		return fmt.Errorf("image %s: its manifest gives the config as %d bytes, want 0 to %d: the image is malformed or too large for smartvm", ref, mf.Config.Size, maxConfigSize)
	}
	if mf.Config.MediaType != types.OCIConfigJSON && mf.Config.MediaType != types.DockerConfigJSON {
		return fmt.Errorf("image %s: %w: its config is %s, not a container image config (is it an artifact, such as a Helm chart?)", ref, ErrUnsupportedMediaType, mf.Config.MediaType)
	}
	for _, l := range mf.Layers {
		if l.Size < 0 {
			return fmt.Errorf("image %s: layer %s: its manifest gives the size as %d: the image is malformed, rebuild or re-push it", ref, l.Digest, l.Size)
		}
		if _, err := layerCompression(l.MediaType); err != nil {
			return fmt.Errorf("image %s: layer %s: %w", ref, l.Digest, err)
		}
	}
	raw, err := img.RawConfigFile() // verified against the manifest's digest
	if err != nil {
		return registryError(ref, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("image %s: config: %w", ref, err)
	}
	if cf.OS != "" && cf.OS != want.OS || cf.Architecture != "" && cf.Architecture != want.Architecture {
		return fmt.Errorf("image %s: %w %s: it is for %s/%s", ref, ErrPlatform, platformString(want), cf.OS, cf.Architecture)
	}
	res.config, res.rawCfg = cf, raw
	return nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no platform at all"
	}
	return strings.Join(s, ", ")
}

// layerCompression returns the compression of a layer media type: "gzip", "zstd" or "".
func layerCompression(mt types.MediaType) (string, error) {
	switch mt {
	case types.DockerLayer, types.OCILayer:
		return "gzip", nil
	case types.OCILayerZStd:
		return "zstd", nil
	case types.DockerUncompressedLayer, types.OCIUncompressedLayer:
		return "", nil
	}
	return "", fmt.Errorf("%w: %s (want a tar, tar+gzip or tar+zstd layer)", ErrUnsupportedMediaType, mt)
}

// ociDigestKey names the record of a bundle converted from an image manifest, whatever the
// reference that named it.
func (m *Manager) ociDigestKey(dg v1.Hash) string {
	return m.refKey(Source{OCI: "digest:" + dg.String()})
}

// pullOCI resolves an OCI reference, and unless that image manifest was converted already,
// downloads and flattens its layers into an ext4 rootfs with the agent as init. It runs
// holding key's lock.
func (m *Manager) pullOCI(ctx context.Context, src Source, key string) (*Bundle, error) {
	ref, err := parseOCIRef(src.OCI)
	if err != nil {
		return nil, err
	}
	if m.agentBinary == "" {
		return nil, errors.New("an OCI image needs the static smartvm-agent binary as its init: set Options.AgentBinary (the smartvm command finds it itself)")
	}
	if err := m.checkOCITools(); err != nil {
		return nil, err
	}
	res, err := m.resolveOCI(ctx, ref)
	if err != nil {
		return nil, err
	}
	dkey := m.ociDigestKey(res.digest)
	if b := m.cached(dkey); b != nil {
		m.log.Debug("image already converted", "image", src.OCI, "digest", res.digest.String(), "id", b.ID)
		if err := m.writeRef(key, m.ociRef(src, b)); err != nil {
			return nil, err
		}
		m.touch(b)
		return b, nil
	}
	if err := m.readConfig(ref, res); err != nil {
		return nil, err
	}
	s, err := m.newStaging(ctx)
	if err != nil {
		return nil, err
	}
	defer s.discard()
	// The conversion works in the staging directory through this handle, never by its path.
	sd, err := s.root.OpenDir(rel(dirStaging, s.name))
	if err != nil {
		return nil, fmt.Errorf("open staging dir: %w", err)
	}
	defer sd.Close()
	kernel, err := m.ociKernel(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("kernel for %s: %w", src, err)
	}
	b := &Bundle{
		Name: ociName(ref), Arch: m.arch, BootArgs: defaultBootArgs(m.arch) + " init=" + AgentPath,
		Source: Source{OCI: src.OCI},
		OCI: &OCIImage{Reference: src.OCI, Digest: res.digest.String(), Platform: res.platform, Config: ImageConfig{
			Entrypoint: res.config.Config.Entrypoint, Cmd: res.config.Config.Cmd, Env: res.config.Config.Env,
			WorkingDir: res.config.Config.WorkingDir, User: res.config.Config.User,
		}},
		Artifacts: []Artifact{kernel, {Role: roleImage, URL: ref.Context().Digest(res.digest.String()).String(),
			SHA256: res.digest.Hex, Size: 0, Format: formatOCI}},
	}
	b.ID = m.ociID(res.digest, kernel.SHA256, b.BootArgs)
	if existing, err := m.readBundle(b.ID); err == nil {
		m.touch(existing)
		return m.recordOCI(src, key, dkey, existing)
	}
	if err := m.convertOCI(ctx, sd, b.Name, res, b.OCI.Config); err != nil {
		return nil, fmt.Errorf("convert %s: %w", src, err)
	}
	if err := sd.WriteFileAtomic(fileConfig, res.rawCfg, 0o444); err != nil {
		return nil, fmt.Errorf("write image config: %w", err)
	}
	for _, f := range []string{fileKernel, fileRootfs} {
		if err := sd.Chmod(f, 0o444); err != nil {
			return nil, fmt.Errorf("make %s read-only: %w", f, err)
		}
	}
	out, err := m.install(ctx, s, b)
	if err != nil {
		return nil, err
	}
	out, err = m.recordOCI(src, key, dkey, out)
	if err != nil {
		return nil, err
	}
	m.evict(ctx)
	return out, nil
}

// recordOCI records that the reference and the manifest digest resolve to b.
func (m *Manager) recordOCI(src Source, key, dkey string, b *Bundle) (*Bundle, error) {
	for _, k := range []string{key, dkey} {
		if err := m.writeRef(k, m.ociRef(src, b)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func (m *Manager) ociRef(src Source, b *Bundle) *ref {
	r := &ref{Source: src.String(), ID: b.ID, Name: b.Name, BootArgs: b.BootArgs, Format: formatOCI, Resolved: time.Now().UTC()}
	for _, a := range b.Artifacts {
		r.Artifacts = append(r.Artifacts, refArtifact{Role: a.Role, URL: a.URL, Size: a.Size, SHA256: a.SHA256})
	}
	return r
}

// ociName is a bundle's label: the repository and the tag or short digest, "alpine:3.20".
func ociName(ref name.Reference) string {
	repo := ref.Context().RepositoryStr()
	if reg := ref.Context().RegistryStr(); reg != name.DefaultRegistry {
		repo = reg + "/" + repo
	}
	repo = strings.TrimPrefix(repo, "library/")
	if d, ok := ref.(name.Digest); ok {
		return repo + "@" + strings.TrimPrefix(d.DigestStr(), "sha256:")[:12]
	}
	return repo + ":" + ref.Identifier()
}

// ociID derives a bundle ID from the image manifest, the kernel and the conversion settings.
func (m *Manager) ociID(dg v1.Hash, kernelSHA, bootArgs string) string {
	h := sha256.New()
	for _, f := range []string{"bundle/oci/v1", m.arch, dg.String(), kernelSHA, bootArgs, strconv.Itoa(m.headMiB)} {
		io.WriteString(h, f)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ociKernel puts the kernel for OCI bundles in the staging directory s: Options.Kernel, else
// the kernel of preset latest from its cached bundle (opened through the cache's handle),
// else that kernel alone, downloaded from the bucket.
func (m *Manager) ociKernel(ctx context.Context, s *staging) (Artifact, error) {
	if m.kernel != "" {
		in, err := safedir.OpenInput(m.kernel, false, false)
		if err != nil {
			return Artifact{}, fmt.Errorf("kernel: %w", err)
		}
		defer in.Close()
		// Copied, never linked: a link would share the caller's file (its owner could
		// change the cached kernel later, and the bundle's chmod would change theirs).
		sum, size, err := s.linkOrCopy(in, fileKernel, false)
		if err != nil {
			return Artifact{}, err
		}
		return Artifact{Role: roleKernel, URL: "file://" + m.kernel, SHA256: sum, Size: size}, nil
	}
	preset := Source{Preset: PresetLatest}
	if b := m.cached(m.refKey(preset)); b != nil {
		for _, a := range b.Artifacts {
			if a.Role == roleKernel {
				in, err := s.root.OpenRegular(rel(dirBundles, b.ID, fileKernel))
				if err != nil {
					return Artifact{}, fmt.Errorf("kernel of cached base image %s: %w", b.ID, err)
				}
				defer in.Close()
				sum, size, err := s.linkOrCopy(in, fileKernel, true)
				if err != nil {
					return Artifact{}, err
				}
				// The new bundle's ID derives from the recorded digest: the file must be it.
				if sum != a.SHA256 || size != a.Size {
					return Artifact{}, fmt.Errorf("kernel of cached base image %s: %w: it is %d bytes with sha256 %s, its record says %d bytes with sha256 %s; remove the image (smartvm images rm %s, Manager.Remove) and pull again",
						b.ID, ErrChecksum, size, sum, a.Size, a.SHA256, b.ID)
				}
				return a, nil
			}
		}
	}
	m.log.Debug("downloading the kernel of preset latest for an OCI image")
	p, err := m.resolvePreset(ctx, preset)
	if err != nil {
		return Artifact{}, err
	}
	a := p.artifacts[0] // presetPlan puts the kernel first
	req := fetchReq{name: a.URL[strings.LastIndex(a.URL, "/")+1:], loc: p.locs[0], size: a.Size, sha256: a.SHA256, etag: a.ETag}
	res, err := m.fetchAt(ctx, req, s.root, rel(dirStaging, s.name, fileKernel))
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Role: roleKernel, URL: a.URL, SHA256: res.sha256, Size: res.size}, nil
}

// linkOrCopy hard-links (when link is set) the open file in to name in the staging
// directory, or copies it, and returns its sha256 and size.
func (s *staging) linkOrCopy(in *os.File, name string, link bool) (string, int64, error) {
	h := sha256.New()
	var w io.Writer = h
	var out *os.File
	dst := rel(dirStaging, s.name, name)
	if !link || s.root.Link(in, dst) != nil {
		var err error
		if out, err = s.root.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err != nil {
			return "", 0, fmt.Errorf("copy kernel: %w", err)
		}
		defer out.Close()
		w = io.MultiWriter(h, out)
	}
	n, err := io.Copy(w, in)
	if err == nil && out != nil {
		err = out.Close()
	}
	if err != nil {
		return "", 0, fmt.Errorf("copy kernel %s: %w", in.Name(), err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// checkOCITools reports the first missing tool an OCI conversion needs.
func (m *Manager) checkOCITools() error {
	for _, t := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := lookTool(m.toolDirs, t); err != nil {
			return err
		}
	}
	return nil
}

// convertOCI flattens the image's layers into a tree in the staging directory sd, adds the
// agent as init and the init config, and builds rootfs.ext4 in sd from it.
//
// Everything in sd goes through descriptors: the tree through an os.Root opened from the
// work/tree directory's descriptor, the files through sd, and the tools (mkfs.ext4, debugfs,
// e2fsck), which need paths, get /proc/self/fd/N paths of descriptors they inherit. No path
// string under the cache is resolved again once sd is open and checked.
func (m *Manager) convertOCI(ctx context.Context, sd *safedir.Dir, label string, res *ociResolved, cfg ImageConfig) error {
	if err := sd.Mkdir(ociWork, 0o700); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	defer sd.RemoveAll(ociWork)
	work, err := sd.OpenDir(ociWork)
	if err != nil {
		return fmt.Errorf("open work dir: %w", err)
	}
	defer work.Close()
	if err := work.Mkdir("tree", 0o700); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	treeDir, err := work.OpenFile("tree", os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("open work dir: %w", err)
	}
	defer treeDir.Close()
	tree, err := oci.NewTree(treeDir, m.ociLimits)
	if err != nil {
		return err
	}
	defer tree.Close()
	layers, err := res.img.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	for i, l := range layers {
		if err := m.applyLayer(ctx, tree, l, i, len(layers)); err != nil {
			return err
		}
	}
	agent, err := readAgent(m.agentBinary)
	if err != nil {
		return err
	}
	initJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode init config: %w", err)
	}
	if err := tree.AddFile(AgentPath, agent, 0o755, 0, 0); err != nil {
		return fmt.Errorf("install the agent: %w", raiseLimitHint(err))
	}
	if err := tree.AddFile(InitConfigPath, append(initJSON, '\n'), 0o644, 0, 0); err != nil {
		return fmt.Errorf("write the init config: %w", err)
	}
	return m.buildExt4(ctx, tree, sd, work, treeDir, label)
}

// ociWork is the directory in the staging directory that holds the unpacked tree and the
// fixups' files while an OCI image is converted.
const ociWork = "work"

// childFd is the path by which a tool started with cmd.ExtraFiles finds the i-th of them.
func childFd(i int) string { return "/proc/self/fd/" + strconv.Itoa(3+i) }

// layerLabel is how progress shows a layer: "layer 2/5 sha256:0123456789ab".
func layerLabel(d v1.Hash, i, n int) string {
	return fmt.Sprintf("layer %d/%d %s:%s", i+1, n, d.Algorithm, d.Hex[:min(12, len(d.Hex))])
}

// applyLayer streams one layer from the registry into the tree, with progress, and checks its
// digest once all of it is read.
func (m *Manager) applyLayer(ctx context.Context, tree *oci.Tree, l v1.Layer, i, n int) error {
	dg, err := l.Digest()
	if err != nil {
		return fmt.Errorf("layer %d: %w", i+1, err)
	}
	label := layerLabel(dg, i, n)
	mt, err := l.MediaType()
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	comp, err := layerCompression(mt)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	size, err := l.Size()
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	rc, err := l.Compressed() // verifies size and digest at the end
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	defer rc.Close()
	cr := &countingReader{r: rc, ctx: ctx, total: size, report: func(done int64) { m.report(label, done, size) }}
	cr.report(0)
	var tarStream io.Reader = cr
	switch comp {
	case "gzip":
		zr, err := gzip.NewReader(cr)
		if err != nil {
			return m.layerError(label, cr, fmt.Errorf("gunzip: %w", err))
		}
		defer zr.Close()
		tarStream = zr
	case "zstd":
		zr, err := zstd.NewReader(cr, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return m.layerError(label, cr, fmt.Errorf("zstd: %w", err))
		}
		defer zr.Close()
		tarStream = zr
	}
	if err := tree.ApplyLayer(label, tarStream); err != nil {
		return m.layerError(label, cr, err)
	}
	// The tar stream ends before the blob does (padding, the compressor's trailer): read the
	// rest, so the digest is checked.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return m.layerError(label, cr, fmt.Errorf("read: %w", err))
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return m.layerError(label, cr, fmt.Errorf("read: %w", err))
	}
	cr.report(cr.done)
	return nil
}

// layerError reports a failed layer. A blob that does not match its digest explains any other
// error, so the rest is read to check: a mismatch becomes ErrChecksum.
func (m *Manager) layerError(label string, cr *countingReader, err error) error {
	if errors.Is(err, oci.ErrLimit) {
		return raiseLimitHint(err)
	}
	if errors.Is(err, oci.ErrNoSpace) {
		return fmt.Errorf("%w; free space on the file system of the base image cache %s, or choose another cache directory", err, m.dir)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if cr.err == nil {
		io.Copy(io.Discard, cr)
	}
	if cr.err != nil && cr.done >= cr.total && cr.stopped() == nil {
		return fmt.Errorf("%s: %w: the blob does not match its digest (%w)", label, ErrChecksum, cr.err)
	}
	if cr.err != nil && cr.stopped() == nil && !errors.Is(err, cr.err) {
		return fmt.Errorf("%s: download: %w", label, cr.err)
	}
	var ee *oci.EntryError
	if errors.As(err, &ee) {
		return err
	}
	return fmt.Errorf("%s: %w", label, err)
}

// raiseLimitHint adds to an error past the image's limits how to raise the limit.
func raiseLimitHint(err error) error {
	var le *oci.LimitError
	switch {
	case !errors.As(err, &le):
		return err
	case le.Bytes:
		return fmt.Errorf("%w: raise it (smartvm images pull --max-size, $SMARTVM_IMAGE_MAX_SIZE, Options.OCIMaxBytes) if the image is that large", err)
	}
	return fmt.Errorf("%w: raise it (smartvm images pull --max-files, $SMARTVM_IMAGE_MAX_FILES, Options.OCIMaxFiles) if the image has that many", err)
}

// countingReader counts the bytes of a blob, reports progress every progressStep bytes,
// fails once ctx (the pull's) ends and keeps the first error other than EOF.
type countingReader struct {
	r           io.Reader
	ctx         context.Context
	done, total int64
	lastReport  int64
	report      func(done int64)
	err         error
}

// stopped is the cause of the end of the pull's context, or nil while it goes on.
func (c *countingReader) stopped() error {
	if c.ctx.Err() != nil {
		return context.Cause(c.ctx)
	}
	return nil
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.stopped(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.done += int64(n)
	if c.done-c.lastReport >= progressStep {
		c.lastReport = c.done
		c.report(c.done)
	}
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// buildExt4 makes dst from the finished tree: mkfs.ext4 -d copies the files, then debugfs
// writes what the disk could not hold (owners, set-id bits, device nodes, FIFOs, xattrs), and
// e2fsck -fn must accept the result. (e2fsprogs 1.47.1 can read a tarball with -d, which would
// spare the tree on disk; 1.47.0, as in Debian 12 and Ubuntu 24.04, cannot, so the tree is the
// path that works everywhere.)
func (m *Manager) buildExt4(ctx context.Context, tree *oci.Tree, sd, work *safedir.Dir, treeDir *os.File, label string) (err error) {
	end := m.beginPhase(label, PhaseMkfs)
	defer func() { end(false) }()
	u, err := tree.Finish()
	if err != nil {
		return fmt.Errorf("unpacked image: %w", err)
	}
	sizeMiB, inodes := treeUsage{bytes: u.Bytes, inodes: u.Inodes}.imageSize(0, m.headMiB)
	m.log.Debug("building ext4 rootfs", "size_mib", sizeMiB, "content_bytes", u.Content, "inodes", u.Inodes)
	tmp := fileRootfs + ".part"
	f, err := sd.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		f.Close()
		if err != nil {
			sd.Remove(tmp)
		}
	}()
	if err = f.Truncate(int64(sizeMiB) << 20); err != nil {
		return fmt.Errorf("size %s: %w", f.Name(), err)
	}
	// mkfs.ext4 gets the tree as fd 3 and the image as fd 4.
	if _, err = m.runToolFiles(ctx, []*os.File{treeDir, f}, "mkfs.ext4", "-q", "-F", "-N", strconv.FormatInt(inodes, 10),
		"-E", "root_owner=0:0", "-d", childFd(0), childFd(1)); err != nil {
		return fmt.Errorf("build ext4: %w", err)
	}
	script, err := fixupScript(tree, work)
	if err != nil {
		return err
	}
	if script != "" {
		if err := writeNew(work, fixupsFile, []byte(script)); err != nil {
			return fmt.Errorf("write debugfs script: %w", err)
		}
		// The directory work holds, where the script and values were just written.
		workDir, err := work.OpenFile(".", os.O_RDONLY|syscall.O_DIRECTORY, 0)
		if err != nil {
			return fmt.Errorf("open work dir: %w", err)
		}
		defer workDir.Close()
		debugfs, err := lookTool(m.toolDirs, "debugfs")
		if err != nil {
			return err
		}
		// debugfs gets the work directory as fd 3 (the script and the xattr values are
		// names in it) and the image as fd 4.
		if err := runDebugfs(ctx, debugfs, []*os.File{workDir, f}, childFd(0)+"/"+fixupsFile, childFd(1), nil); err != nil {
			return fmt.Errorf("set owners, modes and attributes in ext4: %w", err)
		}
	}
	end(true)
	end = m.beginPhase(label, PhaseCheck)
	if _, err = m.runToolFiles(ctx, []*os.File{f}, "e2fsck", "-fn", childFd(0)); err != nil {
		return fmt.Errorf("check ext4: %w", err)
	}
	end(true)
	if err = f.Close(); err != nil { // install fsyncs it
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err = sd.Rename(tmp, sd, fileRootfs); err != nil {
		return fmt.Errorf("rename %s: %w", f.Name(), err)
	}
	return nil
}

// fixupsFile is the debugfs script's name in the work directory.
const fixupsFile = "fixups.debugfs"

// writeNew writes data to the new file name in d (mode 0600): a work file, not kept.
func writeNew(d *safedir.Dir, name string, data []byte) error {
	f, err := d.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

// fixupScript is the debugfs script that gives the image what mkfs.ext4 -d could not copy
// from the tree on disk. Values of extended attributes go through files in work, which the
// script names as debugfs finds them: through its fd 3, the work directory.
func fixupScript(tree *oci.Tree, work *safedir.Dir) (string, error) {
	var b strings.Builder
	nx := 0
	err := tree.Walk(func(e oci.Entry) error {
		if !e.First || !tree.NeedsFixup(e) {
			return nil
		}
		q := debugfsQuote(e.Path)
		switch e.Type {
		case oci.TypeChar, oci.TypeBlock, oci.TypeFifo:
			dir, base := filepath.Split(e.Path)
			node := "p"
			if e.Type != oci.TypeFifo {
				node = map[uint32]string{oci.TypeChar: "c", oci.TypeBlock: "b"}[e.Type] + " " + strconv.FormatInt(e.Major, 10) + " " + strconv.FormatInt(e.Minor, 10)
			}
			fmt.Fprintf(&b, "cd %s\nrm %s\nmknod %s %s\ncd /\n", debugfsQuote(dir), debugfsQuote(base), debugfsQuote(base), node)
		}
		fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\n", q, e.UID, q, e.GID)
		if e.Type != oci.TypeLink {
			fmt.Fprintf(&b, "sif %s mode 0%o\n", q, e.Type|e.Perm)
		}
		names := make([]string, 0, len(e.Xattrs))
		for k := range e.Xattrs {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			nx++
			vf := "xattr-" + strconv.Itoa(nx)
			if err := writeNew(work, vf, []byte(e.Xattrs[k])); err != nil {
				return fmt.Errorf("write xattr value: %w", err)
			}
			fmt.Fprintf(&b, "ea_set -f %s %s %s\n", debugfsQuote(childFd(0)+"/"+vf), q, debugfsQuote(k))
		}
		return nil
	})
	return b.String(), err
}
