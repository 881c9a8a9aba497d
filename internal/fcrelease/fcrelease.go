// Package fcrelease installs Firecracker releases: it finds the latest release tag, downloads
// a release tarball for an architecture, checks it against the published .sha256.txt, and
// puts firecracker (and jailer) into a directory, atomically. The smartvm command's setup and
// run (when no firecracker is found) share it. Downloads go through a Downloader, in smartvm
// a baseimage.Manager, so they get its retries, resumption and stall watchdog.
package fcrelease

import (
	"context"
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
	"sync"

	"github.com/smartvm/smartvm/baseimage"
)

// DefaultURL is Firecracker's GitHub releases page. Under it, download/<tag>/<asset> serves a
// release's files and latest redirects to tag/<newest tag>. A mirror with the same layout
// can replace it.
const DefaultURL = "https://github.com/firecracker-microvm/firecracker/releases"

// maxBinarySize caps each binary extracted from a release tarball.
const maxBinarySize = 512 << 20

// tagRE and sha256RE compile on first use: at package initialisation they would cost every
// smartvm command start-up time, also the many that never look at a release.
var (
	tagRE    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`) })
	sha256RE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })
)

// Downloader fetches one file into dst (which must not exist), verifying sha256 when it is
// set, and returns the sha256 of what it received; baseimage.Manager.Download is one. name
// labels progress reports.
type Downloader interface {
	Download(ctx context.Context, rawURL, dst, sha256, name string) (string, error)
}

// Site is a Firecracker release site.
type Site struct {
	base   string // without a trailing slash
	arch   string // x86_64 or aarch64
	client *http.Client
	files  Downloader
}

// NewSite returns the release site at base (DefaultURL when empty; an http or https URL) for
// arch. client asks for the latest tag; files downloads.
func NewSite(base, arch string, client *http.Client, files Downloader) (*Site, error) {
	if base == "" {
		base = DefaultURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("release site %q is not an http or https URL", base)
	}
	return &Site{base: strings.TrimRight(base, "/"), arch: arch, client: client, files: files}, nil
}

// NormalizeTag turns "1.14.2" or "v1.14.2" into "v1.14.2"; it fails for anything else.
func NormalizeTag(v string) (string, error) {
	tag := v
	if !strings.HasPrefix(tag, "v") {
		tag = "v" + tag
	}
	if !tagRE().MatchString(tag) {
		return "", fmt.Errorf("%q is not a release tag such as v1.14.2", v)
	}
	return tag, nil
}

// Latest asks the release site which tag is the newest: <base>/latest answers with a
// redirect whose last path element is the tag.
func (s *Site) Latest(ctx context.Context) (string, error) {
	u := s.base + "/latest"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("find the latest Firecracker release: %w", err)
	}
	c := *s.client
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
	if !tagRE().MatchString(tag) {
		return "", fmt.Errorf("find the latest Firecracker release: %s redirects to %s, which does not end in a release tag; pass --version vX.Y.Z", u, loc)
	}
	return tag, nil
}

// TarballURL is the release tag's tarball for the site's architecture.
func (s *Site) TarballURL(tag string) string {
	return fmt.Sprintf("%s/download/%s/firecracker-%s-%s.tgz", s.base, tag, tag, s.arch)
}

// Installed describes binaries that Install put in place.
type Installed struct {
	Tag         string `json:"version"`
	Arch        string `json:"arch"`
	URL         string `json:"url"`
	SHA256      string `json:"sha256"`
	Firecracker string `json:"firecracker"`
	Jailer      string `json:"jailer,omitempty"`
}

// Install downloads release tag's tarball, checks it against the published .sha256.txt and
// puts firecracker (and jailer, when the tarball has it) into dir, replacing older copies
// atomically. It tells out what it fetches, where it goes and the checksum. Nothing is
// installed when any step fails, and no download is left behind.
func (s *Site) Install(ctx context.Context, tag, dir string, out io.Writer) (Installed, error) {
	tgzURL := s.TarballURL(tag)
	fmt.Fprintf(out, "Installing Firecracker %s (%s)\n  from %s\n  into %s\n", tag, s.arch, tgzURL, dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	work, err := os.MkdirTemp(dir, ".firecracker-download-")
	if err != nil {
		return Installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	defer os.RemoveAll(work)
	want, err := s.publishedSum(ctx, tgzURL, work)
	if err != nil {
		return Installed{}, err
	}
	tgzPath := filepath.Join(work, "release.tgz")
	got, err := s.files.Download(ctx, tgzURL, tgzPath, want, path.Base(tgzURL))
	if errors.Is(err, baseimage.ErrChecksum) {
		return Installed{}, fmt.Errorf("checksum mismatch for %s: %w; published sha256 %s; nothing was installed", tgzURL, err, want)
	}
	if err != nil {
		return Installed{}, s.hint(err)
	}
	fmt.Fprintf(out, "  sha256 %s (matches %s.sha256.txt)\n", got, path.Base(tgzURL))
	tgz, err := os.Open(tgzPath)
	if err != nil {
		return Installed{}, fmt.Errorf("install Firecracker: %w", err)
	}
	defer tgz.Close()
	res := Installed{Tag: tag, Arch: s.arch, URL: tgzURL, SHA256: got}
	res.Firecracker, res.Jailer, err = extract(tgz, tag, s.arch, dir)
	if err != nil {
		return Installed{}, fmt.Errorf("install Firecracker from %s: %w", tgzURL, err)
	}
	if res.Jailer != "" {
		fmt.Fprintf(out, "Installed %s and %s\n", res.Firecracker, res.Jailer)
	} else {
		fmt.Fprintf(out, "Installed %s\n", res.Firecracker)
	}
	return res, nil
}

// hint adds what to check to a download that found nothing.
func (s *Site) hint(err error) error {
	if errors.Is(err, baseimage.ErrNotFound) {
		return fmt.Errorf("%w (is the version right, and is there a release for %s?)", err, s.arch)
	}
	return err
}

// publishedSum downloads <tarball>.sha256.txt into work and reads it: "<hex>  <file name>".
func (s *Site) publishedSum(ctx context.Context, tgzURL, work string) (string, error) {
	u := tgzURL + ".sha256.txt"
	p := filepath.Join(work, "sha256.txt")
	if _, err := s.files.Download(ctx, u, p, "", path.Base(u)); err != nil {
		return "", s.hint(err)
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", u, err)
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 || !sha256RE().MatchString(strings.ToLower(fields[0])) {
		return "", fmt.Errorf("%s does not start with a sha256 checksum", u)
	}
	if len(fields) > 1 && strings.TrimPrefix(fields[1], "*") != path.Base(tgzURL) {
		return "", fmt.Errorf("%s is the checksum of %s, not of %s", u, fields[1], path.Base(tgzURL))
	}
	return strings.ToLower(fields[0]), nil
}
