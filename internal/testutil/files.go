package testutil

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// maxListed caps how many leftover entries NoFilesUnder lists.
const maxListed = 50

// NoFilesUnder fails the test (without stopping it) unless dir is absent or empty, listing
// what was left under it: files, sockets, links and empty directories alike. It returns
// whether dir was clean.
func NoFilesUnder(t testing.TB, dir string) bool {
	t.Helper()
	var left []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			left = append(left, p+": "+err.Error())
			return nil
		}
		if p == dir {
			if !d.IsDir() {
				left = append(left, p+" is not a directory")
			}
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch typ := d.Type(); {
		case typ.IsDir():
			rel += "/"
		case typ&fs.ModeSymlink != 0:
			rel += " (symlink)"
		case typ&fs.ModeSocket != 0:
			rel += " (socket)"
		case typ&fs.ModeNamedPipe != 0:
			rel += " (fifo)"
		}
		left = append(left, rel)
		return nil
	})
	if err != nil {
		left = append(left, err.Error())
	}
	if len(left) == 0 {
		return true
	}
	more := ""
	if len(left) > maxListed {
		more = "\n  ... and " + strconv.Itoa(len(left)-maxListed) + " more"
		left = left[:maxListed]
	}
	t.Errorf("%s should be empty or absent; left behind:\n  %s%s", dir, strings.Join(left, "\n  "), more)
	return false
}
