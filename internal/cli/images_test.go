package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/internal/testutil"
)

// writeManifest writes a base image manifest named name, with a kernel and an ext4 rootfs next
// to it, into a new directory, and returns its path.
func writeManifest(t *testing.T, name, kernel string) string {
	t.Helper()
	return writeManifestBootArgs(t, name, kernel, "console=ttyS0 reboot=k panic=1")
}

// writeManifestBootArgs is writeManifest with the given boot args.
func writeManifestBootArgs(t *testing.T, name, kernel, bootArgs string) string {
	t.Helper()
	dir := t.TempDir()
	arch, err := baseimage.HostArch()
	if err != nil {
		t.Skip(err)
	}
	file := func(fname, body string) map[string]any {
		if err := os.WriteFile(filepath.Join(dir, fname), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256([]byte(body))
		return map[string]any{"url": fname, "sha256": hex.EncodeToString(h[:]), "size": len(body)}
	}
	rootfs := file("rootfs.ext4", strings.Repeat("r", 4096))
	rootfs["format"] = "ext4"
	m := map[string]any{
		"version":   1,
		"name":      name,
		"arch":      arch,
		"kernel":    file("vmlinux", kernel),
		"rootfs":    rootfs,
		"boot_args": bootArgs,
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func imagesEnv(t *testing.T) cliEnv {
	env := newEnv(t)
	env[envBaseImageDir] = filepath.Join(t.TempDir(), "images")
	return env
}

func TestImagesPullListRemove(t *testing.T) {
	t.Parallel()
	env := imagesEnv(t)
	manifest := writeManifest(t, "tiny-1", "kernel one")
	r := env.run(t, "images", "pull", "--manifest-path", manifest).ok(t)
	if !strings.Contains(r.stdout, "tiny-1") || !strings.Contains(r.stdout, "manifest file "+manifest) {
		t.Errorf("pull output:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "vmlinux: 100%") || !strings.Contains(r.stderr, "rootfs.ext4: 100%") {
		t.Errorf("pull did not print plain progress lines on a non-terminal stderr:\n%s", r.stderr)
	}

	var list []map[string]any
	r = env.run(t, "images", "ls", "--json").ok(t)
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("images ls --json: %v\n%s", err, r.stdout)
	}
	if len(list) != 1 {
		t.Fatalf("images ls --json lists %d images, want 1:\n%s", len(list), r.stdout)
	}
	for _, k := range []string{"id", "name", "kernel", "rootfs", "boot_args", "size", "last_used", "in_use"} {
		if _, ok := list[0][k]; !ok {
			t.Errorf("images ls --json lacks %q:\n%s", k, r.stdout)
		}
	}
	id := list[0]["id"].(string)
	lastUsed, err := time.Parse(time.RFC3339Nano, list[0]["last_used"].(string))
	if err != nil {
		t.Fatal(err)
	}

	// The human table, with the clock three minutes after the pull.
	var out strings.Builder
	a := &app{stdout: &out, stderr: &out, lookupEnv: env.lookup, now: func() time.Time { return lastUsed.Add(3 * time.Minute) }}
	if code := a.run(t.Context(), []string{"images", "ls"}); code != 0 {
		t.Fatalf("images ls: exit %d\n%s", code, out.String())
	}
	got := strings.ReplaceAll(strings.ReplaceAll(out.String(), id, strings.Repeat("x", len(id))), manifest, "<manifest>")
	testutil.Golden(t, "images-ls", []byte(got))
	r = env.run(t, "images", "ls", "--format", "{{.ID}} {{.Name}} {{.InUse}}").ok(t)
	if r.stdout != id+" tiny-1 false\n" {
		t.Errorf("images ls --format printed %q", r.stdout)
	}
	r = env.run(t, "images", "ls", "--format", "json").ok(t)
	var one map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one["id"] != id || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("images ls --format json printed %q (%v)", r.stdout, err)
	}
	env.run(t, "images", "ls", "--format", "{{.Nope").fails(t, ExitUsage, "invalid --format")
	env.run(t, "images", "ls", "--format", "{{.Nope}}").fails(t, ExitError, "can't evaluate field Nope")

	env.run(t, "images", "rm", "ffff").fails(t, ExitError, `no cached base image is called or has an ID starting with "ffff"`)
	r = env.run(t, "images", "rm", id[:6]).ok(t)
	if !strings.HasPrefix(r.stdout, "removed "+id+" tiny-1 (") {
		t.Errorf("images rm printed %q", r.stdout)
	}
	r = env.run(t, "images", "ls", "--json").ok(t)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("images ls --json after rm: %s", r.stdout)
	}
}

func TestImagesEvictionWarning(t *testing.T) {
	t.Parallel()
	env := imagesEnv(t)
	var last result
	for i := range 3 { // the cache keeps two by default
		last = env.run(t, "images", "pull", "--manifest-path", writeManifest(t, fmt.Sprintf("tiny-%d", i), fmt.Sprintf("kernel %d", i))).ok(t)
	}
	if !strings.Contains(last.stderr, "level=WARN") || !strings.Contains(last.stderr, "evicting base image") || !strings.Contains(last.stderr, "name=tiny-0") {
		t.Errorf("the third pull did not warn about evicting tiny-0:\n%s", last.stderr)
	}
	r := env.run(t, "images", "prune", "--keep", "1").ok(t)
	if !strings.Contains(r.stdout, "removed ") || !strings.Contains(r.stdout, "tiny-1") {
		t.Errorf("prune --keep 1 output:\n%s", r.stdout)
	}
	r = env.run(t, "images", "prune", "--keep", "1").ok(t)
	if r.stdout != "nothing to remove\n" {
		t.Errorf("second prune printed %q", r.stdout)
	}
}

func TestImageSourceResolution(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flags imageFlags
		env   cliEnv
		want  baseimage.Source
		err   string
	}{
		{"default", imageFlags{}, cliEnv{}, baseimage.Source{Preset: "latest"}, ""},
		{"env preset", imageFlags{}, cliEnv{envBaseImagePreset: "lts"}, baseimage.Source{Preset: "lts"}, ""},
		{"env url", imageFlags{}, cliEnv{envBaseImageManifest: "https://example.com/m.json"}, baseimage.Source{ManifestURL: "https://example.com/m.json"}, ""},
		{"env path", imageFlags{}, cliEnv{envBaseImageManifestP: "/m.json"}, baseimage.Source{ManifestPath: "/m.json"}, ""},
		{"flag wins", imageFlags{preset: "latest"}, cliEnv{envBaseImagePreset: "lts"}, baseimage.Source{Preset: "latest"}, ""},
		{"two flags", imageFlags{preset: "lts", manifestPath: "/m"}, cliEnv{}, baseimage.Source{}, "use only one of"},
		{"two env", imageFlags{}, cliEnv{envBaseImagePreset: "lts", envBaseImageManifestP: "/m"}, baseimage.Source{}, "set only one of"},
		{"bad preset", imageFlags{preset: "newest"}, cliEnv{}, baseimage.Source{}, `unknown preset "newest"`},
		{"bad preset flag", imageFlags{preset: "newest"}, cliEnv{}, baseimage.Source{}, `invalid --preset: base image source: unknown preset "newest"`},
		{"bad env preset", imageFlags{}, cliEnv{envBaseImagePreset: "newest"}, baseimage.Source{}, `invalid $SMARTVM_BASE_IMAGE_PRESET: base image source: unknown preset "newest"`},
		{"bad env url", imageFlags{}, cliEnv{envBaseImageManifest: "ftp://m"}, baseimage.Source{}, "invalid $SMARTVM_BASE_IMAGE_MANIFEST_URL: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{lookupEnv: tc.env.lookup}
			got, err := a.imageSource(tc.flags)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("source = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestImagesPullNoticeWhenSlow(t *testing.T) {
	t.Parallel()
	manifest := writeManifest(t, "slow", "kernel")
	files := http.FileServer(http.Dir(filepath.Dir(manifest)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".json") {
			time.Sleep(2 * pullNotice)
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	env := imagesEnv(t)
	u := srv.URL + "/manifest.json"
	r := env.run(t, "images", "pull", "--manifest-url", u).ok(t)
	if !strings.HasPrefix(r.stderr, "Pulling base image manifest "+u+" (later runs use the cache in ") {
		t.Errorf("a slow pull did not say what it does first:\n%s", r.stderr)
	}
	// Cached now: no notice, no progress.
	if r := env.run(t, "images", "pull", "--manifest-url", u).ok(t); r.stderr != "" {
		t.Errorf("pulling a cached image printed:\n%s", r.stderr)
	}
}

// Image downloads go through the proxy the environment names (HTTP_PROXY here; the hosts are
// not resolvable, so only the proxy can answer), and skip it for NO_PROXY's hosts.
func TestImagesPullUsesProxy(t *testing.T) {
	t.Parallel()
	manifest := writeManifest(t, "proxied", "kernel via proxy")
	files := http.FileServer(http.Dir(filepath.Dir(manifest)))
	var proxied []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Host != "images.smartvm.invalid" {
			http.Error(w, "unexpected host "+r.URL.Host, http.StatusBadGateway)
			return
		}
		proxied = append(proxied, r.URL.Path)
		files.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	env := imagesEnv(t)
	env["http_proxy"] = proxy.URL
	r := env.run(t, "images", "pull", "--manifest-url", "http://images.smartvm.invalid/manifest.json").ok(t)
	if !strings.Contains(r.stdout, "proxied") || len(proxied) != 3 {
		t.Errorf("pull through the proxy: proxied %q\n%s", proxied, r.stdout)
	}
	env["NO_PROXY"] = "images.smartvm.invalid"
	env.run(t, "images", "pull", "--refresh", "--manifest-url", "http://images.smartvm.invalid/manifest.json").fails(t, ExitError, "images.smartvm.invalid")
}

// A run whose image download cannot reach its host says what works offline, at once.
func TestRunOfflineHint(t *testing.T) {
	t.Parallel()
	env := imagesEnv(t)
	env[envFirecrackerBin] = writeScript(t, filepath.Join(t.TempDir(), "firecracker"), "v1.14.2")
	var dials int
	client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		dials++
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "spec.ccfc.min", IsNotFound: true}}
	}}}
	var out, errOut strings.Builder
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, lookupEnv: env.lookup, httpClient: client}
	code := a.run(t.Context(), []string{"run", "--image", "https://images.smartvm.invalid/manifest.json"})
	result{stdout: out.String(), stderr: errOut.String(), code: code}.fails(t, ExitError,
		"hint: offline? boot the built-in test guest with --image hello, point $SMARTVM_CI_BUCKET_URL at a reachable mirror")
	if dials != 1 {
		t.Errorf("%d attempts to reach a host that does not exist, want 1", dials)
	}
}

// images pull takes run's IMAGE forms; an edited manifest file is read again without
// --refresh; images rm finds an image by name or ID prefix and refuses an ambiguous prefix.
func TestImagesPullPositionalAndRm(t *testing.T) {
	t.Parallel()
	env := imagesEnv(t)
	m := writeManifest(t, "edited", "kernel one")
	r := env.run(t, "images", "pull", m).ok(t)
	if !strings.Contains(r.stdout, "edited") {
		t.Fatalf("pull IMAGE:\n%s", r.stdout)
	}
	first := strings.Fields(strings.Split(r.stdout, "\n")[1])[0]
	// Edit the manifest in place: another kernel (and sha256) under the same path.
	other := writeManifest(t, "edited", "kernel two")
	for _, f := range []string{"manifest.json", "vmlinux"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(other), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(filepath.Dir(m), f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r = env.run(t, "images", "pull", m).ok(t)
	second := strings.Fields(strings.Split(r.stdout, "\n")[1])[0]
	if second == first {
		t.Errorf("pull after editing the manifest served the old image %s", first)
	}
	if r := env.run(t, "images", "pull", "hello").ok(t); !strings.Contains(r.stderr, "nothing to pull") {
		t.Errorf("pull hello: %q", r.stderr)
	}
	env.run(t, "images", "pull", "Not/An:Image!").fails(t, ExitUsage, `invalid IMAGE: image "Not/An:Image!" is not latest, lts, an existing manifest file, an http(s) manifest URL ending in .json, or an OCI image reference`)
	env.run(t, "images", "pull", "lts", "--preset", "latest").fails(t, ExitUsage, "give IMAGE or one of")

	// Two images named alike: the name is ambiguous, an ID prefix is not.
	var common int
	for common < len(first) && first[common] == second[common] {
		common++
	}
	env.run(t, "images", "rm", "edited").fails(t, ExitError, `"edited" is ambiguous: it matches`)
	if common > 0 {
		env.run(t, "images", "rm", first[:common]).fails(t, ExitError, "is ambiguous")
	}
	r = env.run(t, "images", "rm", second[:common+1], first).ok(t)
	if strings.Count(r.stdout, "removed ") != 2 || !strings.Contains(r.stdout, "removed "+second+" edited (") {
		t.Errorf("images rm printed %q", r.stdout)
	}
	// prune reports in the same format, and logs no second line about it.
	env.run(t, "images", "pull", m).ok(t)
	r = env.run(t, "images", "prune").ok(t)
	if !strings.HasPrefix(r.stdout, "removed "+second+" edited (") || r.stderr != "" {
		t.Errorf("prune printed %q and %q on stderr", r.stdout, r.stderr)
	}
}
