package fcrelease

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// extract takes release-<tag>-<arch>/firecracker-<tag>-<arch> and jailer-<tag>-<arch>
// out of the tarball into dir as firecracker and jailer. Both are written to temporary files
// first and renamed into place only when both were extracted. The jailer is optional.
func extract(tgz io.Reader, tag, arch, dir string) (fcPath, jailerPath string, err error) {
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
		if _, dup := temps[name]; dup {
			return "", "", fmt.Errorf("the tarball has %s twice: it is not a Firecracker release tarball", hdr.Name)
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
