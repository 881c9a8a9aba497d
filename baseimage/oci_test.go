package baseimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/smartvm/smartvm/internal/testutil"
)

// testRegistry is go-containerregistry's in-process registry behind an httptest server, with
// hooks to count blob downloads, demand credentials or corrupt a blob.
type testRegistry struct {
	srv       *httptest.Server
	host      string
	blobGets  atomic.Int64
	basicAuth atomic.Value // "user:pass" required when set
	corrupt   atomic.Value // digest string whose blob is served with a flipped byte
	stall     atomic.Value // digest string whose blob stops after half, until the client goes
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if want, _ := r.basicAuth.Load().(string); want != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u+":"+p != want {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet {
			r.blobGets.Add(1)
			if slow, _ := r.stall.Load().(string); slow != "" && strings.HasSuffix(req.URL.Path, slow) {
				rec := httptest.NewRecorder()
				reg.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.WriteHeader(rec.Code)
				w.Write(body[:len(body)/2])
				w.(http.Flusher).Flush()
				<-req.Context().Done()
				return
			}
			if bad, _ := r.corrupt.Load().(string); bad != "" && strings.HasSuffix(req.URL.Path, bad) {
				rec := httptest.NewRecorder()
				reg.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				body[len(body)/2] ^= 0xff
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(body)
				return
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// ref is a reference to repo:tag (or repo@digest) in the registry.
func (r *testRegistry) ref(s string) string { return r.host + "/" + s }

func (r *testRegistry) push(t testing.TB, ref string, img v1.Image) v1.Hash {
	t.Helper()
	return testutil.PushImage(t, r.ref(ref), img)
}

// pushEdited pushes img's blobs, then its manifest as edit leaves it under ref (a repo:tag),
// the way a hostile registry could serve it.
func (r *testRegistry) pushEdited(t testing.TB, ref string, img v1.Image, edit func(*v1.Manifest)) {
	t.Helper()
	r.push(t, ref, img)
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	mf = mf.DeepCopy()
	edit(mf)
	raw, err := json.Marshal(mf)
	if err != nil {
		t.Fatal(err)
	}
	repo, tag, _ := strings.Cut(ref, ":")
	req, err := http.NewRequest(http.MethodPut, r.srv.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", string(mf.MediaType))
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put edited manifest %s: %s", ref, resp.Status)
	}
}

// tarEntry is one entry of a test layer.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func dirE(name string, mode int64, uid int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}}
}

func fileE(name, body string, mode int64, uid int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: uid, Size: int64(len(body))}, body: body}
}

func linkE(typ byte, name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777}}
}

func tarBytes(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzLayer is a gzip-compressed layer of the entries.
func gzLayer(t testing.TB, entries ...tarEntry) v1.Layer {
	t.Helper()
	data := tarBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage is an image for linux/amd64 with the given layers and config.
func testImage(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// capabilityXattr is a VFS_CAP_REVISION_2 security.capability value granting
// cap_net_raw (bit 13), permitted and effective.
const capabilityXattr = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// richImage has two layers exercising what a root filesystem can hold: owners, set-id bits,
// capabilities, hard links, symlinks, device nodes, a FIFO, whiteouts and an opaque directory.
func richImage(t testing.TB) v1.Image {
	capFile := fileE("usr/bin/ping", "ping", 0o755, 0)
	capFile.hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": capabilityXattr}
	devNull := tarEntry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
	devSda := tarEntry{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Gid: 6, Devmajor: 8, Devminor: 0}}
	fifo := tarEntry{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/initctl", Mode: 0o600}}
	base := gzLayer(t,
		dirE("./", 0o755, 0),
		dirE("bin/", 0o755, 0),
		dirE("usr/", 0o755, 0), dirE("usr/bin/", 0o755, 0), dirE("usr/lib/", 0o755, 0),
		fileE("usr/bin/passwd", "passwd binary", 0o4755, 0),
		fileE("usr/bin/wall", "wall binary", 0o2755, 5),
		capFile,
		linkE(tar.TypeLink, "bin/passwd-hardlink", "usr/bin/passwd"),
		linkE(tar.TypeSymlink, "lib", "usr/lib"),
		linkE(tar.TypeSymlink, "usr/lib/abs", "/etc/hostname"),
		dirE("dev/", 0o755, 0), devNull, devSda,
		dirE("run/", 0o755, 0), fifo,
		dirE("tmp/", 0o1777, 0),
		dirE("home/", 0o755, 0), dirE("home/user/", 0o700, 1000), fileE("home/user/notes", "mine", 0o600, 1000),
		dirE("etc/", 0o755, 0), fileE("etc/hostname", "image\n", 0o644, 0), fileE("etc/gone", "whited out", 0o644, 0),
		fileE("etc/replaced", "old", 0o644, 0),
		dirE("opt/", 0o755, 0), dirE("opt/app/", 0o755, 0), fileE("opt/app/old-a", "a", 0o644, 0),
		dirE("opt/app/sub/", 0o755, 0), fileE("opt/app/sub/old-b", "b", 0o644, 0),
		fileE("secret", "unreadable", 0o000, 0),
	)
	top := gzLayer(t,
		fileE("etc/.wh.gone", "", 0o644, 0),
		fileE("etc/replaced", "new", 0o640, 33),
		dirE("opt/app/", 0o750, 0),
		fileE("opt/app/.wh..wh..opq", "", 0o644, 0),
		fileE("opt/app/new", "new file", 0o644, 0),
		fileE("etc/.wh.never-was", "", 0o644, 0),
		fileE("nowhere/.wh.x", "", 0o644, 0),
	)
	return testImage(t, "amd64", v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"},
		Env: []string{"PATH=/usr/bin:/bin", "LANG=C"}, WorkingDir: "/opt/app", User: "1000:1000",
	}, base, top)
}

// ociManager is a manager for OCI tests: a kernel file and an agent binary of its own.
func ociManager(t testing.TB, mod ...func(*Options)) *Manager {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := lookTool(sbinDirs(), tool); err != nil {
			t.Skipf("needs %v", err)
		}
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	agent := filepath.Join(dir, "smartvm-agent")
	os.WriteFile(kernel, []byte(strings.Repeat("kernel\n", 1000)), 0o644)
	os.WriteFile(agent, []byte("agent binary\n"), 0o755)
	return testManager(t, nil, append([]func(*Options){func(o *Options) {
		o.Kernel, o.AgentBinary = kernel, agent
	}}, mod...)...)
}

// TestPullOCI pulls an image with every kind of entry from the in-process registry and checks
// the ext4 with e2fsck and debugfs: owners, modes, set-id bits, capabilities, hard links,
// symlinks, device nodes, whiteouts, the opaque directory, the agent and its init config.
func TestPullOCI(t *testing.T) {
	r := newTestRegistry(t)
	dg := r.push(t, "rich:v1", richImage(t))
	var phases []string
	m := ociManager(t, func(o *Options) {
		o.Progress = func(p Progress) {
			if p.Phase == "" && p.Done == 0 {
				phases = append(phases, p.File)
			}
		}
	})
	ctx := context.Background()
	b, err := m.Pull(ctx, Source{OCI: r.ref("rich:v1")})
	if err != nil {
		t.Fatal(err)
	}
	if b.OCI == nil || b.OCI.Digest != dg.String() || b.OCI.Reference != r.ref("rich:v1") || b.OCI.Platform != "linux/amd64" {
		t.Fatalf("bundle OCI = %+v, want digest %s", b.OCI, dg)
	}
	if b.OCI.Config.User != "1000:1000" || b.OCI.Config.WorkingDir != "/opt/app" || len(b.OCI.Config.Entrypoint) != 2 {
		t.Errorf("config = %+v", b.OCI.Config)
	}
	if !strings.HasSuffix(b.BootArgs, " init="+AgentPath) || !strings.HasPrefix(b.BootArgs, "console=ttyS0 reboot=k panic=1") {
		t.Errorf("boot args %q", b.BootArgs)
	}
	if len(phases) < 2 || !strings.HasPrefix(phases[0], "layer 1/2 sha256:") || !strings.HasPrefix(phases[1], "layer 2/2 sha256:") {
		t.Errorf("progress reported %q, want a bar per layer", phases)
	}
	if b.Name != r.host+"/rich:v1" {
		t.Errorf("name %q", b.Name)
	}
	checkRichRootfs(t, b.Rootfs)
	if got := debugfsCat(t, b.Rootfs, InitConfigPath); !strings.Contains(got, `"working_dir": "/opt/app"`) || !strings.Contains(got, `"entrypoint": [`) {
		t.Errorf("init config:\n%s", got)
	}
	if data, _ := os.ReadFile(b.Kernel); !strings.HasPrefix(string(data), "kernel\n") {
		t.Errorf("kernel not in the bundle")
	}
	// The caller's kernel is copied: the bundle's read-only kernel shares nothing with it.
	if src, err := os.Stat(m.kernel); err != nil {
		t.Error(err)
	} else if src.Mode().Perm() != 0o644 {
		t.Errorf("Options.Kernel is mode %#o after the pull, want it untouched (0644)", src.Mode().Perm())
	} else if dst, err := os.Stat(b.Kernel); err != nil || os.SameFile(src, dst) {
		t.Errorf("the bundle's kernel is Options.Kernel itself (a hard link), or missing: %v", err)
	}
	// The same manifest under another tag is neither downloaded nor converted again.
	r.push(t, "rich:v2", richImage(t))
	before := r.blobGets.Load()
	b2, err := m.Pull(ctx, Source{OCI: r.ref("rich:v2")})
	if err != nil {
		t.Fatal(err)
	}
	if b2.ID != b.ID || r.blobGets.Load() != before {
		t.Errorf("second tag of one image: id %s (want %s), %d blob downloads", b2.ID, b.ID, r.blobGets.Load()-before)
	}
	// By digest, and offline once recorded.
	byDigest := Source{OCI: r.ref("rich@" + dg.String())}
	if b3, err := m.Pull(ctx, byDigest); err != nil || b3.ID != b.ID {
		t.Fatalf("pull by digest: %v", err)
	}
	r.srv.Close()
	for _, src := range []Source{byDigest, {OCI: r.ref("rich:v1")}} {
		if b4, err := m.Pull(ctx, src); err != nil || b4.ID != b.ID {
			t.Errorf("offline pull of %s: %v", src, err)
		}
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 1 || list[0].OCI == nil || list[0].OCI.Digest != dg.String() {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if err := m.Remove(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
}

// checkRichRootfs checks the ext4 made from richImage.
func checkRichRootfs(t *testing.T, image string) {
	t.Helper()
	if out, err := exec.Command(mustTool(t, "e2fsck"), "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	for path, want := range map[string]string{
		"/":                    "directory 0755 uid 0 gid 0",
		"/usr/bin/passwd":      "regular 04755 uid 0 gid 0",
		"/usr/bin/wall":        "regular 02755 uid 5 gid 5",
		"/usr/bin/ping":        "regular 0755 uid 0 gid 0",
		"/bin/passwd-hardlink": "regular 04755 uid 0 gid 0",
		"/lib":                 "symlink 0777 uid 0 gid 0",
		"/dev/null":            "character special 0666 uid 0 gid 0",
		"/dev/sda":             "block special 0660 uid 0 gid 6",
		"/tmp":                 "directory 01777 uid 0 gid 0",
		"/home/user":           "directory 0700 uid 1000 gid 1000",
		"/home/user/notes":     "regular 0600 uid 1000 gid 1000",
		"/etc/replaced":        "regular 0640 uid 33 gid 33",
		"/opt/app":             "directory 0750 uid 0 gid 0",
		"/opt/app/new":         "regular 0644 uid 0 gid 0",
		"/secret":              "regular 0000 uid 0 gid 0",
		AgentPath:              "regular 0755 uid 0 gid 0",
		InitConfigPath:         "regular 0644 uid 0 gid 0",
		"/etc/gone":            "missing",
		"/opt/app/old-a":       "missing",
		"/opt/app/sub":         "missing",
		"/nowhere":             "missing",
	} {
		if got := debugfsStat(t, image, path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	for path, want := range map[string]string{"/etc/replaced": "new", "/usr/bin/passwd": "passwd binary", "/bin/passwd-hardlink": "passwd binary", "/secret": "unreadable", AgentPath: "agent binary\n"} {
		if got := debugfsCat(t, image, path); got != want {
			t.Errorf("content of %s: %q, want %q", path, got, want)
		}
	}
	debugfs := mustTool(t, "debugfs")
	out, _ := exec.Command(debugfs, "-R", "ea_list /usr/bin/ping", image).Output()
	if !strings.Contains(string(out), "security.capability (20) = 01 00 00 02 00 20 00 00") {
		t.Errorf("capability xattr: %s", out)
	}
	out, _ = exec.Command(debugfs, "-R", "stat /usr/bin/passwd", image).Output()
	if !strings.Contains(string(out), "Links: 2") {
		t.Errorf("hard link not kept:\n%s", out)
	}
	out, _ = exec.Command(debugfs, "-R", "stat /dev/null", image).Output()
	if !strings.Contains(string(out), "Device major/minor number: 01:03") {
		t.Errorf("device numbers:\n%s", out)
	}
	out, _ = exec.Command(debugfs, "-R", "stat /run/initctl", image).Output()
	if !strings.Contains(string(out), "Type: FIFO    Mode:  0600") {
		t.Errorf("FIFO:\n%s", out)
	}
	out, _ = exec.Command(debugfs, "-R", "stat /usr/lib/abs", image).Output()
	if !strings.Contains(string(out), `Fast link dest: "/etc/hostname"`) {
		t.Errorf("symlink target:\n%s", out)
	}
}

// staticKeychain answers every registry with one user and password.
type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// TestPullOCIAuth pulls from a registry that wants a password: the keychain's is used, and a
// wrong one is ErrAuth.
func TestPullOCIAuth(t *testing.T) {
	r := newTestRegistry(t)
	r.push(t, "private:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("f", "x", 0o644, 0))))
	r.basicAuth.Store("me:secret")
	m := ociManager(t, func(o *Options) { o.Keychain = staticKeychain{"me", "wrong"} })
	_, err := m.Pull(context.Background(), Source{OCI: r.ref("private:1")})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "docker login "+r.host) {
		t.Fatalf("wrong password: %v, want ErrAuth naming docker login", err)
	}
	assertNothingCached(t, m)
	m = ociManager(t, func(o *Options) { o.Keychain = staticKeychain{"me", "secret"} })
	if _, err := m.Pull(context.Background(), Source{OCI: r.ref("private:1")}); err != nil {
		t.Fatalf("right password: %v", err)
	}
}

// TestPullOCIPlatform picks this platform out of a multi-platform index, and names the
// platforms an index has when this one is not among them.
func TestPullOCIPlatform(t *testing.T) {
	r := newTestRegistry(t)
	amd := testImage(t, "amd64", v1.Config{Cmd: []string{"amd"}}, gzLayer(t, fileE("arch", "amd64", 0o644, 0)))
	arm := testImage(t, "arm64", v1.Config{Cmd: []string{"arm"}}, gzLayer(t, fileE("arch", "arm64", 0o644, 0)))
	s390 := testImage(t, "s390x", v1.Config{}, gzLayer(t, fileE("arch", "s390x", 0o644, 0)))
	add := func(img v1.Image, p v1.Platform) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}}
	}
	pushIndex := func(tag string, adds ...mutate.IndexAddendum) {
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
		ref, _ := name.ParseReference(r.ref(tag))
		if err := remote.WriteIndex(ref, idx); err != nil {
			t.Fatal(err)
		}
	}
	pushIndex("multi:1", add(s390, v1.Platform{OS: "linux", Architecture: "s390x"}),
		add(arm, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}),
		add(amd, v1.Platform{OS: "linux", Architecture: "amd64"}))
	pushIndex("other:1", add(s390, v1.Platform{OS: "linux", Architecture: "s390x"}),
		add(arm, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}))
	for _, arch := range []string{ArchX86_64, ArchAarch64} {
		m := ociManager(t, func(o *Options) { o.Arch = arch })
		b, err := m.Pull(context.Background(), Source{OCI: r.ref("multi:1")})
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		want := map[string]string{ArchX86_64: "amd64", ArchAarch64: "arm64"}[arch]
		if got := debugfsCat(t, b.Rootfs, "/arch"); got != want || b.OCI.Platform != "linux/"+want || b.OCI.Config.Cmd[0] != want[:3] {
			t.Errorf("%s: got the %s image (%s, %v)", arch, got, b.OCI.Platform, b.OCI.Config.Cmd)
		}
	}
	// A build for newer CPUs (amd64/v3) listed first does not win over the baseline one.
	amdV3 := testImage(t, "amd64", v1.Config{Cmd: []string{"v3"}}, gzLayer(t, fileE("arch", "amd64-v3", 0o644, 0)))
	pushIndex("variants:1", add(amdV3, v1.Platform{OS: "linux", Architecture: "amd64", Variant: "v3"}),
		add(amd, v1.Platform{OS: "linux", Architecture: "amd64"}))
	m := ociManager(t, func(o *Options) { o.Arch = ArchX86_64 })
	if b, err := m.Pull(context.Background(), Source{OCI: r.ref("variants:1")}); err != nil || debugfsCat(t, b.Rootfs, "/arch") != "amd64" {
		t.Errorf("index with amd64/v3 first: %v; want the baseline amd64 image", err)
	}
	m = ociManager(t)
	_, err := m.Pull(context.Background(), Source{OCI: r.ref("other:1")})
	if !errors.Is(err, ErrPlatform) || !strings.Contains(err.Error(), "linux/s390x, linux/arm/v7") {
		t.Errorf("index without linux/amd64: %v, want ErrPlatform naming the platforms", err)
	}
	r.push(t, "armonly:1", arm)
	if _, err := m.Pull(context.Background(), Source{OCI: r.ref("armonly:1")}); !errors.Is(err, ErrPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("single arm64 image: %v, want ErrPlatform", err)
	}
	assertNothingCached(t, m)
}

// TestPullOCIBadInput: each bad image fails with a clear error and caches nothing.
func TestPullOCIBadInput(t *testing.T) {
	r := newTestRegistry(t)
	okLayer := gzLayer(t, fileE("etc/hostname", "x", 0o644, 0))
	r.push(t, "ok:1", testImage(t, "amd64", v1.Config{}, okLayer))
	helm := mutate.ConfigMediaType(testImage(t, "amd64", v1.Config{}, okLayer), "application/vnd.cncf.helm.config.v1+json")
	r.push(t, "helm:1", helm)
	r.push(t, "foreign:1", testImage(t, "amd64", v1.Config{}, static.NewLayer([]byte("x"), "application/vnd.example.weird")))
	r.push(t, "dotdot:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("etc/../../escape", "x", 0o644, 0))))
	r.push(t, "abs:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("/etc/abs", "x", 0o644, 0))))
	r.push(t, "symlink:1", testImage(t, "amd64", v1.Config{},
		gzLayer(t, linkE(tar.TypeSymlink, "etc", "/host-etc")),
		gzLayer(t, fileE("etc/passwd", "owned", 0o644, 0))))
	r.push(t, "relsymlink:1", testImage(t, "amd64", v1.Config{},
		gzLayer(t, dirE("a/", 0o755, 0), linkE(tar.TypeSymlink, "a/up", "../../../..")),
		gzLayer(t, fileE("a/up/tmp/x", "owned", 0o644, 0))))
	r.push(t, "hardlink:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, linkE(tar.TypeLink, "shadow", "../../etc/shadow"))))
	corrupt := testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("big", strings.Repeat("data", 10000), 0o644, 0)))
	r.push(t, "corrupt:1", corrupt)
	cl, _ := corrupt.Layers()
	cdg, _ := cl[0].Digest()
	r.corrupt.Store(cdg.String())
	okImg := testImage(t, "amd64", v1.Config{}, okLayer)
	r.pushEdited(t, "ok:negconfig", okImg, func(mf *v1.Manifest) { mf.Config.Size = -1 })
	r.pushEdited(t, "ok:neglayer", okImg, func(mf *v1.Manifest) { mf.Layers[0].Size = -1 })
	for _, tc := range []struct {
		ref, msg string
	}{
		{"ok:negconfig", "gives the config as -1 bytes"},
		{"ok:neglayer", "gives the size as -1"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			m := ociManager(t)
			_, err := m.Pull(context.Background(), Source{OCI: r.ref(tc.ref)})
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("pull %s: %v; want an error with %q", tc.ref, err, tc.msg)
			}
			assertNothingCached(t, m)
		})
	}
	for _, tc := range []struct {
		ref  string
		want error
		msg  string
	}{
		{"ok:nosuchtag", ErrNotFound, "no such repository, tag or digest"},
		{"nosuchrepo:1", ErrNotFound, "no such repository"},
		{"helm:1", ErrUnsupportedMediaType, "application/vnd.cncf.helm.config.v1+json"},
		{"foreign:1", ErrUnsupportedMediaType, "application/vnd.example.weird"},
		{"dotdot:1", ErrUnsafeLayer, `entry "etc/../../escape"`},
		{"abs:1", ErrUnsafeLayer, `entry "/etc/abs"`},
		{"symlink:1", ErrUnsafeLayer, `layer 2/2 sha256:`},
		{"relsymlink:1", ErrUnsafeLayer, `goes through /a/up, a symlink`},
		{"hardlink:1", ErrUnsafeLayer, `hard link target "../../etc/shadow"`},
		{"corrupt:1", ErrChecksum, "does not match its digest"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			m := ociManager(t)
			_, err := m.Pull(context.Background(), Source{OCI: r.ref(tc.ref)})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("pull %s: %v; want %v and %q", tc.ref, err, tc.want, tc.msg)
			}
			assertNothingCached(t, m)
		})
	}
}

// TestPullOCILargeLayer converts an image with a 200 MiB layer.
func TestPullOCILargeLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("200 MiB layer")
	}
	r := newTestRegistry(t)
	big := bigLayer(t, 200<<20)
	r.push(t, "big:1", testImage(t, "amd64", v1.Config{}, big))
	m := ociManager(t)
	b, err := m.Pull(context.Background(), Source{OCI: r.ref("big:1")})
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfsStat(t, b.Rootfs, "/data/blob"); got != "regular 0644 uid 0 gid 0" {
		t.Errorf("/data/blob: %s", got)
	}
	out, _ := exec.Command(mustTool(t, "debugfs"), "-R", "stat /data/blob", b.Rootfs).Output()
	if !strings.Contains(string(out), "Size: 209715200") {
		t.Errorf("size of /data/blob:\n%.300s", out)
	}
	st, err := os.Stat(b.Rootfs)
	if err != nil || st.Size() < 200<<20+int64(m.headMiB)<<20 {
		t.Errorf("rootfs %d bytes: want room for 200 MiB and %d MiB of headroom", st.Size(), m.headMiB)
	}
}

// bigLayer is an uncompressed layer holding one file of size bytes that do not compress
// (xorshift output: fast to make).
func bigLayer(t testing.TB, size int) v1.Layer {
	t.Helper()
	data := bigLayerData(size)
	return static.NewLayer(tarBytes(t, dirE("data/", 0o755, 0), fileE("data/blob", string(data), 0o644, 0)), types.OCIUncompressedLayer)
}

// TestPullOCIPresetKernel: without Options.Kernel, an OCI bundle gets preset latest's kernel,
// downloaded alone when the preset is not cached (no rootfs is fetched), and linked from the
// preset's bundle when it is. A tag pushed again is seen only with Refresh.
func TestPullOCIPresetKernel(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	r := newTestRegistry(t)
	r.push(t, "app:1", testImage(t, "amd64", v1.Config{Cmd: []string{"v1"}}, gzLayer(t, fileE("v", "1", 0o644, 0))))
	agent := writeAgent(t, "agent")
	m := testManager(t, bucket, func(o *Options) { o.AgentBinary, o.Keep = agent, 5 })
	ctx := context.Background()
	b, err := m.Pull(ctx, Source{OCI: r.ref("app:1")})
	if err != nil {
		t.Fatal(err)
	}
	const kernelKey = buildNew + "x86_64/vmlinux-6.18.40"
	if got, _ := os.ReadFile(b.Kernel); string(got) != string(kernelBytes(kernelKey)) {
		t.Errorf("kernel %.60q, want preset latest's", got)
	}
	if n := bucket.count(buildNew + "x86_64/ubuntu-24.04.squashfs"); n != 0 {
		t.Errorf("the preset's rootfs was downloaded %d times for a kernel", n)
	}
	preset, err := m.Pull(ctx, Source{Preset: PresetLatest})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(preset.Kernel); string(got) != string(kernelBytes(kernelKey)) {
		t.Fatalf("preset latest's kernel is not %s", kernelKey)
	}
	r.push(t, "app:1", testImage(t, "amd64", v1.Config{Cmd: []string{"v2"}}, gzLayer(t, fileE("v", "2", 0o644, 0))))
	if again, err := m.Pull(ctx, Source{OCI: r.ref("app:1")}); err != nil || again.ID != b.ID {
		t.Fatalf("pull of a cached tag: %v, id changed: %v", err, again.ID != b.ID)
	}
	kernelGets := bucket.count(kernelKey)
	b2, err := m.Pull(ctx, Source{OCI: r.ref("app:1"), Refresh: true})
	if err != nil {
		t.Fatal(err)
	}
	if b2.ID == b.ID || b2.OCI.Config.Cmd[0] != "v2" || debugfsCat(t, b2.Rootfs, "/v") != "2" {
		t.Errorf("refresh of a re-pushed tag kept the old image")
	}
	if bucket.count(kernelKey) != kernelGets {
		t.Error("the kernel was downloaded again although preset latest is cached")
	}
	s1, err1 := os.Stat(preset.Kernel)
	s2, err2 := os.Stat(b2.Kernel)
	if err1 != nil || err2 != nil || !os.SameFile(s1, s2) {
		t.Errorf("the kernel was copied, not linked from the preset's bundle (%v, %v)", err1, err2)
	}
	// A cached kernel that no longer matches its record is refused, not given to a new bundle
	// whose ID says otherwise.
	f, err := os.OpenFile(preset.Kernel, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte("X"), 0)
	if err = errors.Join(err, f.Close()); err != nil {
		t.Fatal(err)
	}
	r.push(t, "app:2", testImage(t, "amd64", v1.Config{Cmd: []string{"v3"}}, gzLayer(t, fileE("v", "3", 0o644, 0))))
	if _, err := m.Pull(ctx, Source{OCI: r.ref("app:2")}); !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "images rm "+preset.ID) {
		t.Errorf("pull with a corrupt cached kernel: %v, want ErrChecksum saying to remove %s", err, preset.ID)
	}
}

// TestPullOCIKernelDownloadByDescriptor: the kernel of preset latest, downloaded alone into
// the staging directory, is written and put in place through the cache's handle. The test
// moves the cache directory aside while the kernel downloads and leaves a decoy at its path:
// the kernel must still reach the bundle, and the decoy must get nothing.
func TestPullOCIKernelDownloadByDescriptor(t *testing.T) {
	needConvertTools(t)
	bucket := newFakeBucket(t)
	populateBucket(t, bucket)
	r := newTestRegistry(t)
	r.push(t, "app:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("v", "1", 0o644, 0))))
	agent := writeAgent(t, "agent")
	const kernelKey = buildNew + "x86_64/vmlinux-6.18.40"
	var cache, moved string
	var away, back bool
	var hookErr error
	hook := func(err error) {
		if hookErr == nil {
			hookErr = err
		}
	}
	m := testManager(t, bucket, func(o *Options) {
		o.AgentBinary, cache, moved = agent, o.Dir, o.Dir+".moved"
		o.Progress = func(p Progress) {
			switch {
			case p.File == path.Base(kernelKey) && p.Done == 0 && !away:
				ents, err := os.ReadDir(filepath.Join(cache, dirStaging))
				hook(err)
				hook(os.Rename(cache, moved))
				away = true
				for _, e := range ents {
					if e.IsDir() {
						hook(os.MkdirAll(filepath.Join(cache, dirStaging, e.Name()), 0o700))
					}
				}
			case p.File != path.Base(kernelKey) && away && !back:
				hook(os.Rename(cache, cache+".decoy"))
				hook(os.Rename(moved, cache))
				back = true
			}
		}
	})
	b, err := m.Pull(context.Background(), Source{OCI: r.ref("app:1")})
	if !away {
		t.Fatal("the kernel download the test hooks into was not reported")
	}
	if !back { // the pull ended before the layers: put the cache back to see what it left
		hook(os.Rename(cache, cache+".decoy"))
		hook(os.Rename(moved, cache))
	}
	if hookErr != nil {
		t.Fatalf("test hook: %v", hookErr)
	}
	if err != nil {
		t.Fatalf("pull: %v (the kernel was put in place by its path, in the decoy)", err)
	}
	if got, _ := os.ReadFile(b.Kernel); string(got) != string(kernelBytes(kernelKey)) {
		t.Errorf("kernel %.60q, want preset latest's", got)
	}
	var planted []string
	filepath.WalkDir(cache+".decoy", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			planted = append(planted, p)
		}
		return nil
	})
	if len(planted) > 0 {
		t.Errorf("the download wrote into the decoy at the cache's path: %v", planted)
	}
}

// TestPullOCIAgentTooLarge: the agent binary comes from the caller and is read into memory:
// one larger than maxAgentSize is refused with an error naming the limit, and nothing is
// cached.
func TestPullOCIAgentTooLarge(t *testing.T) {
	r := newTestRegistry(t)
	r.push(t, "app:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("v", "1", 0o644, 0))))
	agent := filepath.Join(t.TempDir(), "smartvm-agent")
	if err := os.WriteFile(agent, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(agent, maxAgentSize+1); err != nil { // sparse: costs no disk
		t.Fatal(err)
	}
	m := ociManager(t, func(o *Options) { o.AgentBinary = agent })
	_, err := m.Pull(context.Background(), Source{OCI: r.ref("app:1")})
	if err == nil || !strings.Contains(err.Error(), "larger than 128 MiB") || !strings.Contains(err.Error(), agent) {
		t.Errorf("pull with a %d-byte agent: %v, want a refusal naming the agent and the limit", maxAgentSize+1, err)
	}
	assertNothingCached(t, m)
}

// TestPullOCIEviction: OCI bundles follow the cache's rules: with Keep 1, installing a second
// image warns about the first and evicts it, unless it is in use.
func TestPullOCIEviction(t *testing.T) {
	r := newTestRegistry(t)
	for i, tag := range []string{"a:1", "b:1", "c:1"} {
		r.push(t, tag, testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("n", strconv.Itoa(i), 0o644, 0))))
	}
	logs := &logCapture{}
	m := ociManager(t, func(o *Options) { o.Keep, o.Logger = 1, slog.New(logs) })
	ctx := context.Background()
	a, err := m.Pull(ctx, Source{OCI: r.ref("a:1")})
	if err != nil {
		t.Fatal(err)
	}
	release, err := m.Use(ctx, a.ID, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	b, err := m.Pull(ctx, Source{OCI: r.ref("b:1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, a.ID); err != nil {
		t.Errorf("an image in use was evicted: %v", err)
	}
	release()
	time.Sleep(10 * time.Millisecond)
	if _, err := m.Pull(ctx, Source{OCI: r.ref("c:1")}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []*Bundle{a, b} {
		if _, err := m.Get(ctx, gone.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s not evicted: %v", gone.Name, err)
		}
	}
	warned := map[string]bool{}
	logs.mu.Lock()
	for _, rec := range logs.records {
		if rec.Level == slog.LevelWarn && rec.Message == "evicting base image" {
			warned[attr(rec, "name")] = true
		}
	}
	logs.mu.Unlock()
	if !warned[a.Name] || !warned[b.Name] {
		t.Errorf("eviction warnings for %v, want %s and %s", warned, a.Name, b.Name)
	}
}

// pushStalled pushes to ref an image of one layer of size bytes, whose blob the registry
// stops serving halfway.
func (r *testRegistry) pushStalled(t *testing.T, ref string, size int) {
	t.Helper()
	img := testImage(t, "amd64", v1.Config{}, bigLayer(t, size))
	r.push(t, ref, img)
	ls, _ := img.Layers()
	dg, _ := ls[0].Digest()
	r.stall.Store(dg.String())
}

// TestPullOCICancel cancels a pull while a layer streams in: Pull returns the cancellation at
// once and leaves nothing behind.
func TestPullOCICancel(t *testing.T) {
	r := newTestRegistry(t)
	r.pushStalled(t, "slow:1", 8<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := ociManager(t, func(o *Options) {
		o.Progress = func(p Progress) {
			if p.Phase == "" && p.Done >= 1<<20 {
				cancel()
			}
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := m.Pull(ctx, Source{OCI: r.ref("slow:1")})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled pull: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pull did not end after its context was cancelled")
	}
	assertNothingCached(t, m)
}

// TestPullOCIStall: a registry that stops sending a layer halfway fails the pull once
// Options.StallTimeout passes without data, and leaves nothing behind.
func TestPullOCIStall(t *testing.T) {
	r := newTestRegistry(t)
	r.pushStalled(t, "stuck:1", 4<<20)
	m := ociManager(t, func(o *Options) { o.StallTimeout = 300 * time.Millisecond })
	done := make(chan error, 1)
	go func() {
		_, err := m.Pull(context.Background(), Source{OCI: r.ref("stuck:1")})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errStall) {
			t.Fatalf("pull of a stalled layer: %v, want a stall", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pull of a stalled layer did not end after its stall timeout")
	}
	assertNothingCached(t, m)
}

// TestPullOCICompressions: tar+zstd and plain tar layers are read as well as tar+gzip.
func TestPullOCICompressions(t *testing.T) {
	r := newTestRegistry(t)
	var zbuf bytes.Buffer
	zw, err := zstd.NewWriter(&zbuf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(tarBytes(t, fileE("zstd", "from zstd", 0o644, 0)))
	zw.Close()
	plain := static.NewLayer(tarBytes(t, fileE("plain", "from tar", 0o644, 0)), types.DockerUncompressedLayer)
	r.push(t, "comp:1", testImage(t, "amd64", v1.Config{},
		gzLayer(t, fileE("gzip", "from gzip", 0o644, 0)),
		static.NewLayer(zbuf.Bytes(), types.OCILayerZStd), plain))
	b, err := ociManager(t).Pull(context.Background(), Source{OCI: r.ref("comp:1")})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"gzip", "zstd", "tar"} {
		name := "/" + f
		if f == "tar" {
			name = "/plain"
		}
		if got := debugfsCat(t, b.Rootfs, name); got != "from "+f {
			t.Errorf("%s: %q", name, got)
		}
	}
}

// TestPullOCILimits: a layer that unpacks past Options.OCIMaxBytes (a small gzip blob of
// zeros) or holds more than Options.OCIMaxFiles entries fails naming the image, the layer,
// the limit and how to raise it, and leaves nothing in the cache, the partial tree included.
func TestPullOCILimits(t *testing.T) {
	r := newTestRegistry(t)
	bomb := gzLayer(t, dirE("data/", 0o755, 0), fileE("data/zeros", strings.Repeat("\x00", 4<<20), 0o644, 0))
	r.push(t, "bomb:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, fileE("etc/hostname", "x", 0o644, 0)), bomb))
	var many []tarEntry
	for i := range 50 {
		many = append(many, fileE("f"+strconv.Itoa(i), "", 0o644, 0))
	}
	r.push(t, "many:1", testImage(t, "amd64", v1.Config{}, gzLayer(t, many...)))
	for _, tc := range []struct {
		ref  string
		opts func(*Options)
		msg  []string
	}{
		{"bomb:1", func(o *Options) { o.OCIMaxBytes = 1 << 20 }, []string{"layer 2/2 sha256:", `entry "data/zeros"`, "more than 1048576 bytes", "--max-size", "Options.OCIMaxBytes"}},
		{"many:1", func(o *Options) { o.OCIMaxFiles = 20 }, []string{"layer 1/1 sha256:", `entry "f20"`, "more than 20 entries", "--max-files", "Options.OCIMaxFiles"}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			m := ociManager(t, tc.opts)
			_, err := m.Pull(context.Background(), Source{OCI: r.ref(tc.ref)})
			if !errors.Is(err, ErrImageTooLarge) {
				t.Fatalf("pull %s: %v; want ErrImageTooLarge", tc.ref, err)
			}
			for _, s := range append(tc.msg, r.ref(tc.ref)) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			assertNothingCached(t, m)
		})
	}
	// The same images within the default limits convert.
	if _, err := ociManager(t).Pull(context.Background(), Source{OCI: r.ref("bomb:1")}); err != nil {
		t.Fatalf("pull within the default limits: %v", err)
	}
}

// TestPullOCIStagingByDescriptor: the conversion works in its staging directory through the
// handle it opened, never by the directory's path. While mkfs.ext4, debugfs and e2fsck run,
// the test moves the staging directory aside and puts a decoy with a tree of its own at its
// path; the image must still be built from the layers, in the real directory.
func TestPullOCIStagingByDescriptor(t *testing.T) {
	r := newTestRegistry(t)
	capFile := fileE("usr/bin/ping", "ping", 0o4755, 0)
	capFile.hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": capabilityXattr}
	r.push(t, "img:1", testImage(t, "amd64", v1.Config{}, gzLayer(t,
		dirE("etc/", 0o755, 0), fileE("etc/hostname", "real\n", 0o644, 0), dirE("usr/", 0o755, 0), dirE("usr/bin/", 0o755, 0), capFile)))
	var staging, moved string
	var hookErr error
	swap := func(from, to string) {
		if hookErr == nil {
			hookErr = os.Rename(from, to)
		}
	}
	m := ociManager(t, func(o *Options) {
		o.Progress = func(p Progress) {
			switch {
			case p.Phase == PhaseMkfs && p.Done == 0 && p.Elapsed == 0:
				ents, err := os.ReadDir(filepath.Join(o.Dir, dirStaging))
				for _, e := range ents {
					if e.IsDir() {
						staging = filepath.Join(o.Dir, dirStaging, e.Name())
					}
				}
				if err != nil || staging == "" {
					hookErr = fmt.Errorf("no staging directory (%v)", err)
					return
				}
				moved = staging + ".moved"
				swap(staging, moved)
				if hookErr == nil {
					hookErr = os.MkdirAll(filepath.Join(staging, "work", "tree"), 0o700)
				}
				if hookErr == nil {
					hookErr = os.WriteFile(filepath.Join(staging, "work", "tree", "decoy"), []byte("decoy"), 0o644)
				}
			case p.Phase == PhaseCheck && p.Done == 1 && moved != "":
				decoy := staging + ".decoy"
				swap(staging, decoy)
				swap(moved, staging)
				if hookErr == nil {
					hookErr = os.RemoveAll(decoy)
				}
			}
		}
	})
	b, err := m.Pull(context.Background(), Source{OCI: r.ref("img:1")})
	if hookErr != nil {
		t.Fatalf("test hook: %v", hookErr)
	}
	if moved == "" {
		t.Fatal("the phases the test hooks into were not reported")
	}
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if got := debugfsCat(t, b.Rootfs, "/etc/hostname"); got != "real\n" {
		t.Errorf("/etc/hostname in the image: %q, want the layer's", got)
	}
	if got := debugfsStat(t, b.Rootfs, "/decoy"); got != "missing" {
		t.Errorf("/decoy in the image: %s: the image was built from the path, not the directory opened", got)
	}
	if got := debugfsStat(t, b.Rootfs, "/usr/bin/ping"); got != "regular 04755 uid 0 gid 0" {
		t.Errorf("/usr/bin/ping: %s, want the fixups applied", got)
	}
	out, _ := exec.Command(mustTool(t, "debugfs"), "-R", "ea_list /usr/bin/ping", b.Rootfs).Output()
	if !strings.Contains(string(out), "security.capability") {
		t.Errorf("/usr/bin/ping has no capability:\n%s", out)
	}
}
