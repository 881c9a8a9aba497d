package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smartvm/smartvm/baseimage"
)

// releaseServer serves a Firecracker release site: download/<tag>/firecracker-<tag>-<arch>.tgz
// with its .sha256.txt, and latest redirecting to tag/<tag>. The firecracker in the tarball is
// a script printing its version.
type releaseServer struct {
	*httptest.Server
	tag, arch string
	tgz       []byte
	sum       string // what the .sha256.txt publishes
}

func newReleaseServer(t *testing.T, tag string) *releaseServer {
	t.Helper()
	arch, err := baseimage.HostArch()
	if err != nil {
		t.Skip(err)
	}
	rs := &releaseServer{tag: tag, arch: arch}
	rs.tgz = releaseTarball(t, tag, arch)
	h := sha256.Sum256(rs.tgz)
	rs.sum = hex.EncodeToString(h[:])
	name := "firecracker-" + tag + "-" + arch + ".tgz"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /releases/download/"+tag+"/"+name, func(w http.ResponseWriter, r *http.Request) {
		w.Write(rs.tgz)
	})
	mux.HandleFunc("GET /releases/download/"+tag+"/"+name+".sha256.txt", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(rs.sum + "  " + name + "\n"))
	})
	mux.HandleFunc("GET /releases/latest", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/releases/tag/"+tag, http.StatusFound)
	})
	rs.Server = httptest.NewServer(mux)
	t.Cleanup(rs.Close)
	return rs
}

func (rs *releaseServer) url() string { return rs.URL + "/releases" }

// setFirecracker replaces the firecracker in the tarball (and its published checksum).
func (rs *releaseServer) setFirecracker(t *testing.T, script string) {
	t.Helper()
	rs.tgz = releaseTarballWith(t, rs.tag, rs.arch, script)
	h := sha256.Sum256(rs.tgz)
	rs.sum = hex.EncodeToString(h[:])
}

func releaseTarball(t *testing.T, tag, arch string) []byte {
	t.Helper()
	return releaseTarballWith(t, tag, arch, "#!/bin/sh\necho 'Firecracker "+tag+"'\n")
}

func releaseTarballWith(t *testing.T, tag, arch, firecracker string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	dir := "release-" + tag + "-" + arch + "/"
	files := []struct{ name, body string }{
		{dir, ""},
		{dir + "firecracker-" + tag + "-" + arch, firecracker},
		{dir + "firecracker-" + tag + "-" + arch + ".debug", "debug symbols"},
		{dir + "jailer-" + tag + "-" + arch, "#!/bin/sh\necho 'Jailer " + tag + "'\n"},
		{dir + "SHA256SUMS", "whatever"},
	}
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: 0o755, Size: int64(len(f.body)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSetupInstallsVerifiedRelease(t *testing.T) {
	t.Parallel()
	rs := newReleaseServer(t, "v1.14.2")
	env := newEnv(t)
	env[envFirecrackerReleases] = rs.url()
	r := env.run(t, "setup", "--version", "1.14.2").ok(t)
	binDir := filepath.Join(env["HOME"], ".smartvm", "bin")
	for _, want := range []string{
		"Installing Firecracker v1.14.2 (" + rs.arch + ")",
		"from " + rs.url() + "/download/v1.14.2/firecracker-v1.14.2-" + rs.arch + ".tgz",
		"into " + binDir,
		"sha256 " + rs.sum,
		"Installed " + filepath.Join(binDir, "firecracker") + " and " + filepath.Join(binDir, "jailer"),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("setup output does not say %q:\n%s", want, r.stdout)
		}
	}
	assertDirFiles(t, binDir, "firecracker", "jailer")
	// The installed binary is the one smartvm now finds.
	r = env.run(t, "version").ok(t)
	if want := "firecracker v1.14.2 (" + filepath.Join(binDir, "firecracker") + ", from ~/.smartvm/bin)"; !strings.Contains(r.stdout, want) {
		t.Errorf("version after setup does not say %q:\n%s", want, r.stdout)
	}
}

func TestSetupLatestIntoDir(t *testing.T) {
	t.Parallel()
	rs := newReleaseServer(t, "v1.14.1")
	env := newEnv(t)
	env[envFirecrackerReleases] = rs.url()
	dir := filepath.Join(t.TempDir(), "bin")
	r := env.run(t, "setup", "--dir", dir).ok(t)
	if !strings.Contains(r.stdout, "Installing Firecracker v1.14.1") {
		t.Errorf("setup did not resolve the latest release:\n%s", r.stdout)
	}
	assertDirFiles(t, dir, "firecracker", "jailer")
}

func TestSetupWrongChecksumInstallsNothing(t *testing.T) {
	t.Parallel()
	rs := newReleaseServer(t, "v1.14.2")
	rs.sum = strings.Repeat("0", 64)
	env := newEnv(t)
	env[envFirecrackerReleases] = rs.url()
	dir := filepath.Join(t.TempDir(), "bin")
	env.run(t, "setup", "--version", "v1.14.2", "--dir", dir).fails(t, ExitError, "checksum mismatch")
	assertDirFiles(t, dir)
}

func TestSetupErrors(t *testing.T) {
	t.Parallel()
	rs := newReleaseServer(t, "v1.14.2")
	env := newEnv(t)
	env[envFirecrackerReleases] = rs.url()
	env.run(t, "setup", "--version", "v9.9.9").fails(t, ExitError, "404 Not Found (is the version right")

	noRedirect := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(noRedirect.Close)
	env[envFirecrackerReleases] = noRedirect.URL
	env.run(t, "setup").fails(t, ExitError, "not a redirect to the newest release; pass --version")

	env[envFirecrackerReleases] = "ftp://example.invalid/releases"
	env.run(t, "setup").fails(t, ExitError, "is not an http or https URL")
}

// assertDirFiles checks that dir holds exactly the named files (no temporary leftovers); a
// missing dir counts as empty.
func assertDirFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}
