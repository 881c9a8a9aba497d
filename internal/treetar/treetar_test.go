package treetar

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, link string
	typ        byte
	data       string
}

func tarOf(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.data))}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil && hdr.Size > 0 {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func TestExtractRefusesEscapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"dotdot", []entry{{name: "../x", typ: tar.TypeReg, data: "x"}}, `must not contain ".."`},
		{"absolute", []entry{{name: "/x", typ: tar.TypeReg, data: "x"}}, "must be relative"},
		{"symlink then write through it", []entry{{name: "l", link: "/", typ: tar.TypeSymlink}, {name: "l/escaped", typ: tar.TypeReg, data: "x"}}, "escaped"},
		{"relative symlink out", []entry{{name: "l", link: "../..", typ: tar.TypeSymlink}, {name: "l/escaped", typ: tar.TypeReg, data: "x"}}, "escaped"},
		{"hard link out", []entry{{name: "h", link: "../outside", typ: tar.TypeLink}}, `must not contain ".."`},
		{"device", []entry{{name: "dev", typ: tar.TypeChar}}, "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			parent := t.TempDir()
			dir := filepath.Join(parent, "dst")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(parent, "outside"), []byte("o"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Extract(tarOf(t, tc.entries...), dir, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Extract: %v, want an error containing %q", err, tc.want)
			}
			for _, p := range []string{filepath.Join(parent, "x"), filepath.Join(parent, "escaped"), "/escaped"} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written outside the destination", p)
				}
			}
		})
	}
}

func TestWriteExtractRoundTrip(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "d/e"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "d/e/f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("e/f", filepath.Join(src, "d/l")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, filepath.Join(src, "d"), "copy"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	n, err := Extract(&buf, dst, Options{})
	if err != nil || n != 4 {
		t.Fatalf("Extract: %d entries, %v; want 4", n, err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "copy/l")); err != nil || string(b) != "data" {
		t.Errorf("through the copied symlink: %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "copy/e")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("copied directory: %v, %v; want mode 0750", fi.Mode(), err)
	}
}

func TestWriteRefusesSpecialFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	err := Write(&bytes.Buffer{}, dir, "x")
	if err == nil || !strings.Contains(err.Error(), "FIFO files are not copied") {
		t.Errorf("Write of a tree with a FIFO: %v", err)
	}
}

// With a Prefix, a stream extracted into an existing directory creates that one name and
// nothing else: it cannot replace, chmod or hard-link what the directory already holds.
func TestExtractPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"another file", []entry{{name: "passwd", typ: tar.TypeReg, data: "x"}}, `outside "app"`},
		{"the directory itself", []entry{{name: "keep/", typ: tar.TypeDir}}, `outside "app"`},
		{"a name that only starts alike", []entry{{name: "app2", typ: tar.TypeReg, data: "x"}}, `outside "app"`},
		{"a hard link to a file it did not make", []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/h", link: "keep", typ: tar.TypeLink}}, "did not create"},
		{"a file through a symlink it made", []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/up", link: "..", typ: tar.TypeSymlink}, {name: "app/up/passwd", typ: tar.TypeReg, data: "x"}}, "through the symlink"},
		{"a directory through a symlink it made", []entry{{name: "app", link: ".", typ: tar.TypeSymlink}, {name: "app/keep/", typ: tar.TypeDir}}, "through the symlink"},
		{"a hard link through a symlink it made", []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/up", link: "..", typ: tar.TypeSymlink}, {name: "app/up/keep2", link: "app/up/keep", typ: tar.TypeLink}}, "through the symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "passwd"), []byte("mine"), 0o600)
			os.WriteFile(filepath.Join(dir, "keep"), []byte("mine"), 0o600)
			_, err := Extract(tarOf(t, tc.entries...), dir, Options{Prefix: "app"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Extract: %v, want an error containing %q", err, tc.want)
			}
			for _, f := range []string{"passwd", "keep"} {
				if b, _ := os.ReadFile(filepath.Join(dir, f)); string(b) != "mine" {
					t.Errorf("%s changed: %q", f, b)
				}
			}
		})
	}
	dir := t.TempDir()
	n, err := Extract(tarOf(t, entry{name: "app/", typ: tar.TypeDir}, entry{name: "app/f", typ: tar.TypeReg, data: "x"},
		entry{name: "app/h", link: "app/f", typ: tar.TypeLink}), dir, Options{Prefix: "app"})
	if err != nil || n != 3 {
		t.Fatalf("a tree under the prefix: %d, %v", n, err)
	}
}

// TestExtractLimits: a stream past MaxBytes or MaxEntries stops with a LimitError before the
// file that would pass the limit is written; one at the limit is extracted whole.
func TestExtractLimits(t *testing.T) {
	t.Parallel()
	files := []entry{{name: "d", typ: tar.TypeDir}, {name: "d/a", typ: tar.TypeReg, data: "1234"}, {name: "d/b", typ: tar.TypeReg, data: "5678"}}
	for _, tc := range []struct {
		name     string
		opts     Options
		bytes    bool
		limit    int64
		wantFile bool // whether d/b, the entry past the limit, exists
	}{
		{"bytes past", Options{MaxBytes: 7}, true, 7, false},
		{"bytes at", Options{MaxBytes: 8}, false, 0, true},
		{"entries past", Options{MaxEntries: 2}, false, 2, false},
		{"entries at", Options{MaxEntries: 3}, false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			_, err := Extract(tarOf(t, files...), dir, tc.opts)
			var le *LimitError
			switch {
			case tc.limit == 0 && err != nil:
				t.Fatalf("Extract: %v", err)
			case tc.limit != 0 && (!errors.As(err, &le) || le.Bytes != tc.bytes || le.Limit != tc.limit || le.Entry != "d/b"):
				t.Fatalf("Extract: %v (%+v), want a LimitError for d/b", err, le)
			}
			if _, err := os.Lstat(filepath.Join(dir, "d/b")); (err == nil) != tc.wantFile {
				t.Errorf("d/b exists: %v, want %v", err == nil, tc.wantFile)
			}
		})
	}
}

// TestExtractTruncated: a stream that ends inside a file is an error naming that file, not a
// short file and a complaint about the stream that follows.
func TestExtractTruncated(t *testing.T) {
	t.Parallel()
	data := strings.Repeat("x", 3000)
	whole := tarOf(t, entry{name: "a", typ: tar.TypeReg, data: data}).Bytes()
	cut := whole[:512+2000] // the header and 2000 of the 3000 bytes
	_, err := Extract(bytes.NewReader(cut), t.TempDir(), Options{})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.HasPrefix(err.Error(), "a: ") {
		t.Fatalf("Extract of a cut stream: %v, want an unexpected EOF in entry a", err)
	}
}
