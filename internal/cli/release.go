package cli

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/smartvm/smartvm/baseimage"
)

// defaultReleaseURL is Firecracker's GitHub releases page. Under it, download/<tag>/<asset>
// serves a release's files and latest redirects to tag/<newest tag>.
// SMARTVM_FIRECRACKER_RELEASE_URL replaces it with a mirror that has the same layout.
const defaultReleaseURL = "https://github.com/firecracker-microvm/firecracker/releases"

// maxBinarySize caps each binary extracted from a release tarball.
const maxBinarySize = 512 << 20

var releaseTagRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// releaseSite downloads Firecracker release tarballs.
type releaseSite struct {
	base   string // without a trailing slash
	arch   string // x86_64 or aarch64
	client *http.Client
}

func (a *app) releaseSite() (releaseSite, error) {
	arch, err := baseimage.HostArch()
	if err != nil {
		return releaseSite{}, fmt.Errorf("no Firecracker release for this host: %w", err)
	}
	base := defaultReleaseURL
	if v := a.getenv(envFirecrackerReleases); v != "" {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return releaseSite{}, fmt.Errorf("$%s=%q is not an http or https URL", envFirecrackerReleases, v)
		}
		base = v
	}
	return releaseSite{base: strings.TrimRight(base, "/"), arch: arch, client: a.client()}, nil
}

// normalizeTag turns "1.14.2" or "v1.14.2" into "v1.14.2".
func normalizeTag(v string) (string, error) {
	tag := v
	if !strings.HasPrefix(tag, "v") {
		tag = "v" + tag
	}
	if !releaseTagRE.MatchString(tag) {
		return "", usagef("invalid --version %q: want a release tag such as v1.14.2", v)
	}
	return tag, nil
}

// latest asks the release site which tag is the newest: <base>/latest answers with a
// redirect whose last path element is the tag.
func (r releaseSite) latest(ctx context.Context) (string, error) {
	u := r.base + "/latest"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("find the latest Firecracker release: %w", err)
	}
	c := *r.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("find the latest Firecracker release: %w", err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || resp.StatusCode/100 != 3 {
		return "", fmt.Errorf("find the latest Firecracker release: GET %s answered %s, not a redirect to the newest release; pass --version vX.Y.Z", u, resp.Status)
	}
	tag := path.Base(loc.Path)
	if !releaseTagRE.MatchString(tag) {
		return "", fmt.Errorf("find the latest Firecracker release: %s redirects to %s, which does not end in a release tag; pass --version vX.Y.Z", u, loc)
	}
	return tag, nil
}

func (r releaseSite) tarballURL(tag string) string {
	return fmt.Sprintf("%s/download/%s/firecracker-%s-%s.tgz", r.base, tag, tag, r.arch)
}

// installed describes binaries that install put in place.
type installed struct {
	Tag         string `json:"version"`
	Arch        string `json:"arch"`
	URL         string `json:"url"`
	SHA256      string `json:"sha256"`
	Firecracker string `json:"firecracker"`
	Jailer      string `json:"jailer,omitempty"`
}

// install downloads release tag's tarball, checks it against the published .sha256.txt and
// puts firecracker (and jailer, when the tarball has it) into dir, replacing older copies
// atomically. It tells out what it fetches, where it goes and the checksum. Nothing is
// installed when any step fails.
func (r releaseSite) install(ctx context.Context, tag, dir string, out io.Writer, prog *progress) (installed, error) {
	tgzURL := r.tarballURL(tag)
	fmt.Fprintf(out, "Installing Firecracker %s (%s)\n  from %s\n  into %s\n", tag, r.arch, tgzURL, dir)
	want, err := r.publishedSum(ctx, tgzURL)
	if err != nil {
		return installed{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	tgz, err := os.CreateTemp(dir, ".firecracker-*.tgz")
	if err != nil {
		return installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	defer func() {
		tgz.Close()
		os.Remove(tgz.Name())
	}()
	got, err := r.download(ctx, tgzURL, tgz, prog)
	if err != nil {
		return installed{}, err
	}
	if got != want {
		return installed{}, fmt.Errorf("checksum mismatch for %s: downloaded sha256 %s, published %s; nothing was installed", tgzURL, got, want)
	}
	fmt.Fprintf(out, "  sha256 %s (matches %s.sha256.txt)\n", got, path.Base(tgzURL))
	if _, err := tgz.Seek(0, io.SeekStart); err != nil {
		return installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	res := installed{Tag: tag, Arch: r.arch, URL: tgzURL, SHA256: got}
	res.Firecracker, res.Jailer, err = extractRelease(tgz, tag, r.arch, dir)
	if err != nil {
		return installed{}, fmt.Errorf("install Firecracker from %s: %w", tgzURL, err)
	}
	if res.Jailer != "" {
		fmt.Fprintf(out, "Installed %s and %s\n", res.Firecracker, res.Jailer)
	} else {
		fmt.Fprintf(out, "Installed %s\n", res.Firecracker)
	}
	return res, nil
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// publishedSum reads <tarball>.sha256.txt: "<hex>  <file name>".
func (r releaseSite) publishedSum(ctx context.Context, tgzURL string) (string, error) {
	u := tgzURL + ".sha256.txt"
	resp, err := r.get(ctx, u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", u, err)
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 || !sha256RE.MatchString(strings.ToLower(fields[0])) {
		return "", fmt.Errorf("%s does not start with a sha256 checksum", u)
	}
	if len(fields) > 1 && strings.TrimPrefix(fields[1], "*") != path.Base(tgzURL) {
		return "", fmt.Errorf("%s is the checksum of %s, not of %s", u, fields[1], path.Base(tgzURL))
	}
	return strings.ToLower(fields[0]), nil
}

// get starts a GET and fails on any status but 200 OK.
func (r releaseSite) get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", u, err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		hint := ""
		if resp.StatusCode == http.StatusNotFound {
			hint = " (is the version right, and is there a release for " + r.arch + "?)"
		}
		return nil, fmt.Errorf("download %s: %s%s", u, resp.Status, hint)
	}
	return resp, nil
}

// download copies u into w and returns the hex sha256 of what it received.
func (r releaseSite) download(ctx context.Context, u string, w io.Writer, prog *progress) (string, error) {
	resp, err := r.get(ctx, u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	defer prog.finish()
	total := resp.ContentLength
	h := sha256.New()
	file := path.Base(u)
	pr := &progressReader{r: resp.Body, fn: func(n int64) { prog.update(file, n, total) }}
	if _, err := io.Copy(io.MultiWriter(w, h), pr); err != nil {
		return "", fmt.Errorf("download %s: %w", u, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// progressReader reports the running byte count after each read.
type progressReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	p.fn(p.n)
	return n, err
}

// extractRelease takes release-<tag>-<arch>/firecracker-<tag>-<arch> and jailer-<tag>-<arch>
// out of the tarball into dir as firecracker and jailer. Both are written to temporary files
// first and renamed into place only when both were extracted. The jailer is optional.
func extractRelease(tgz io.Reader, tag, arch, dir string) (fcPath, jailerPath string, err error) {
	zr, err := gzip.NewReader(tgz)
	if err != nil {
		return "", "", fmt.Errorf("read tarball: %w", err)
	}
	prefix := fmt.Sprintf("release-%s-%s/", tag, arch)
	want := map[string]string{
		prefix + fmt.Sprintf("firecracker-%s-%s", tag, arch): "firecracker",
		prefix + fmt.Sprintf("jailer-%s-%s", tag, arch):      "jailer",
	}
	temps := map[string]string{} // final name -> temp path
	defer func() {
		for _, t := range temps {
			os.Remove(t) // only left after a failure; renamed files are gone from here
		}
	}()
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("read tarball: %w", err)
		}
		name, ok := want[strings.TrimPrefix(hdr.Name, "./")]
		if !ok || hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size > maxBinarySize {
			return "", "", fmt.Errorf("%s in the tarball is %d bytes, more than the %d allowed", hdr.Name, hdr.Size, maxBinarySize)
		}
		tmp, err := writeTemp(dir, "."+name+"-*", io.LimitReader(tr, maxBinarySize))
		if tmp != "" {
			temps[name] = tmp
		}
		if err != nil {
			return "", "", fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
	if _, ok := temps["firecracker"]; !ok {
		return "", "", fmt.Errorf("the tarball has no %sfirecracker-%s-%s", prefix, tag, arch)
	}
	for _, name := range []string{"firecracker", "jailer"} {
		tmp, ok := temps[name]
		if !ok {
			continue
		}
		final := filepath.Join(dir, name)
		if err := os.Rename(tmp, final); err != nil {
			return "", "", fmt.Errorf("install %s: %w", final, err)
		}
		delete(temps, name)
		if name == "firecracker" {
			fcPath = final
		} else {
			jailerPath = final
		}
	}
	return fcPath, jailerPath, nil
}

// writeTemp writes r to a new executable file in dir, synced to disk, and returns its path.
// The path is returned even on failure so the caller can remove it.
func writeTemp(dir, pattern string, r io.Reader) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Chmod(0o755)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return f.Name(), err
}
