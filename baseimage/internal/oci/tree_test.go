package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type ent struct {
	typ      byte
	name     string
	body     string
	link     string
	mode     int64
	paxXattr map[string]string
	uid      int64
	major    int64
}

func layer(t *testing.T, es ...ent) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Typeflag: e.typ, Name: e.name, Linkname: e.link, Mode: e.mode, Size: int64(len(e.body)), Uid: int(e.uid), Devmajor: e.major}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.paxXattr != nil {
			h.PAXRecords, h.Format = map[string]string{}, tar.FormatPAX
			for k, v := range e.paxXattr {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return bytes.NewReader(buf.Bytes())
}

func file(name, body string) ent { return ent{typ: tar.TypeReg, name: name, body: body} }
func dir(name string) ent        { return ent{typ: tar.TypeDir, name: name, mode: 0o755} }

// openDir opens the directory d for the test's duration.
func openDir(t *testing.T, d string) *os.File {
	t.Helper()
	f, err := os.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func newTree(t *testing.T) (*Tree, string) {
	t.Helper()
	d := t.TempDir()
	tr, err := NewTree(openDir(t, d), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, d
}

// names lists the tree's paths with their types, as the image will hold them.
func names(t *testing.T, tr *Tree) string {
	t.Helper()
	var out []string
	tr.Walk(func(e Entry) error {
		out = append(out, e.Path+map[uint32]string{TypeDir: "/", TypeLink: "@", TypeReg: ""}[e.Type])
		return nil
	})
	return strings.Join(out, " ")
}

// TestLayerSemantics applies layers with whiteouts, opaque directories and replacements and
// checks the merged tree, in memory and on disk.
func TestLayerSemantics(t *testing.T) {
	tr, d := newTree(t)
	steps := [][]ent{
		{dir("a"), file("a/x", "x1"), dir("a/sub"), file("a/sub/deep", "d"), file("keep", "k1"),
			dir("gone"), file("gone/f", "f"), file("f2d", "file"), dir("d2f"), file("d2f/in", "i"),
			file("orig", "original")},
		// Same-layer entries before the opaque marker stay; the lower ones go.
		{file("a/y", "y"), dir("a/sub"), file("a/sub/new", "n"), file("a/.wh..wh..opq", ""),
			file(".wh.gone", ""), dir("f2d"), file("d2f", "now a file"),
			{typ: tar.TypeLink, name: "hard", link: "orig"}},
		{file("orig", "replaced"), file(".wh.nothing", ""), file("missingdir/.wh.x", "")},
	}
	for i, s := range steps {
		if err := tr.ApplyLayer("layer "+string(rune('1'+i)), layer(t, s...)); err != nil {
			t.Fatalf("layer %d: %v", i+1, err)
		}
	}
	const want = "// /a/ /a/sub/ /a/sub/new /a/y /d2f /f2d/ /hard /keep /orig"
	if got := names(t, tr); got != want {
		t.Errorf("tree:\n got %s\nwant %s", got, want)
	}
	for p, body := range map[string]string{"a/y": "y", "d2f": "now a file", "hard": "original", "orig": "replaced", "keep": "k1"} {
		if got, err := os.ReadFile(filepath.Join(d, p)); err != nil || string(got) != body {
			t.Errorf("%s on disk: %q, %v; want %q", p, got, err, body)
		}
	}
	for _, p := range []string{"a/x", "a/sub/deep", "gone", "missingdir"} {
		if _, err := os.Lstat(filepath.Join(d, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still on disk: %v", p, err)
		}
	}
	u, err := tr.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if u.Inodes != 10 || u.Content != int64(len("ynnow a fileoriginalk1replaced")) {
		t.Errorf("usage %+v", u)
	}
}

// TestRefused: entries that could write outside the tree, or that it cannot hold.
func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers [][]ent
		want   error
		msg    string
	}{
		{"dotdot", [][]ent{{file("a/../../x", "")}}, ErrUnsafe, `".." element`},
		{"absolute", [][]ent{{file("/etc/x", "")}}, ErrUnsafe, "absolute"},
		{"through absolute symlink", [][]ent{{{typ: tar.TypeSymlink, name: "etc", link: "/etc"}}, {file("etc/passwd", "")}}, ErrUnsafe, `/etc, a symlink to "/etc"`},
		{"through symlink same layer", [][]ent{{{typ: tar.TypeSymlink, name: "l", link: "."}, file("l/x", "")}}, ErrUnsafe, "symlink"},
		{"whiteout through symlink", [][]ent{{dir("d"), {typ: tar.TypeSymlink, name: "s", link: "/"}}, {file("s/.wh.etc", "")}}, ErrUnsafe, "symlink"},
		{"hard link out", [][]ent{{{typ: tar.TypeLink, name: "h", link: "../etc/shadow"}}}, ErrUnsafe, "hard link target"},
		{"hard link through symlink", [][]ent{{{typ: tar.TypeSymlink, name: "s", link: "/etc"}, {typ: tar.TypeLink, name: "h", link: "s/shadow"}}}, ErrUnsafe, "symlink"},
		{"hard link missing", [][]ent{{{typ: tar.TypeLink, name: "h", link: "nope"}}}, ErrInvalid, "not in the image"},
		{"hard link to dir", [][]ent{{dir("d"), {typ: tar.TypeLink, name: "h", link: "d"}}}, ErrInvalid, "not a regular file"},
		{"under a file", [][]ent{{file("f", ""), file("f/x", "")}}, ErrInvalid, "not a directory"},
		{"newline", [][]ent{{file("a\nsif / uid 5", "")}}, ErrInvalid, "control character"},
		{"long element", [][]ent{{file(strings.Repeat("x", 256), "")}}, ErrInvalid, "longer than 255"},
		{"big xattrs", [][]ent{{{typ: tar.TypeReg, name: "f", paxXattr: map[string]string{"user.big": strings.Repeat("v", 4000)}}}}, ErrInvalid, "extended attributes"},
		{"uid beyond 32 bits", [][]ent{{{typ: tar.TypeReg, name: "f", uid: 1 << 33}}}, ErrInvalid, "owner 8589934592:0"},
		{"negative uid", [][]ent{{{typ: tar.TypeReg, name: "f", uid: -5}}}, ErrInvalid, "owner -5:0"},
		{"device major beyond 12 bits", [][]ent{{{typ: tar.TypeChar, name: "c", major: 1 << 12}}}, ErrInvalid, "device 4096:0"},
		{"socket-like type", [][]ent{{{typ: 'Z', name: "f"}}}, ErrInvalid, "unsupported tar entry type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, d := newTree(t)
			var err error
			for i, l := range tc.layers {
				if err = tr.ApplyLayer("layer "+string(rune('1'+i)), layer(t, l...)); err != nil {
					break
				}
			}
			var ee *EntryError
			if !errors.Is(err, tc.want) || !errors.As(err, &ee) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v; want %v with %q", err, tc.want, tc.msg)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(d), "x")); err == nil {
				t.Error("an entry was written outside the tree")
			}
		})
	}
}

// TestFixups: what mkfs.ext4 -d cannot copy from the disk is flagged for fixing up.
func TestFixups(t *testing.T) {
	tr, _ := newTree(t)
	err := tr.ApplyLayer("l", layer(t,
		ent{typ: tar.TypeReg, name: "suid", mode: 0o4755},
		ent{typ: tar.TypeReg, name: "plain", mode: 0o644},
		ent{typ: tar.TypeChar, name: "null", mode: 0o666},
		ent{typ: tar.TypeReg, name: "cap", mode: 0o755, paxXattr: map[string]string{"security.capability": "\x01\x00"}},
	))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	tr.Walk(func(e Entry) error {
		got[e.Path] = tr.NeedsFixup(e)
		return nil
	})
	root := os.Geteuid() == 0
	for p, want := range map[string]bool{"/suid": true, "/plain": !root, "/null": true, "/cap": true} {
		if got[p] != want {
			t.Errorf("%s needs fixup: %v, want %v", p, got[p], want)
		}
	}
}

// TestLimits: a tree refuses the entry that would take it past its byte or entry limit,
// before writing it, across layers; a negative limit is none.
func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lim    Limits
		layers [][]ent
		bytes  bool
		at     string // the refused entry; "" when all apply
	}{
		{"bytes", Limits{MaxBytes: 10, MaxEntries: -1}, [][]ent{{file("a", "12345")}, {file("b", "12345"), file("c", "1")}}, true, "c"},
		{"bytes exact", Limits{MaxBytes: 10}, [][]ent{{file("a", "12345"), file("b", "12345")}}, false, ""},
		{"entries", Limits{MaxEntries: 3}, [][]ent{{dir("d/"), file("d/a", "")}, {file("d/b", ""), file("d/c", "")}}, false, "d/c"},
		{"no limit", Limits{MaxBytes: -1, MaxEntries: -1}, [][]ent{{file("a", strings.Repeat("x", 100)), file("b", "")}}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			tr, err := NewTree(openDir(t, d), tc.lim)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			for i, l := range tc.layers {
				err = tr.ApplyLayer("layer "+string(rune('1'+i)), layer(t, l...))
				if err != nil {
					break
				}
			}
			if tc.at == "" {
				if err != nil {
					t.Fatalf("apply: %v", err)
				}
				return
			}
			var ee *EntryError
			var le *LimitError
			if !errors.As(err, &ee) || ee.Entry != tc.at || !errors.As(err, &le) || !errors.Is(err, ErrLimit) || le.Bytes != tc.bytes {
				t.Fatalf("apply: %v; want a LimitError (bytes %v) at entry %q", err, tc.bytes, tc.at)
			}
			if _, err := os.Lstat(filepath.Join(d, tc.at)); !os.IsNotExist(err) {
				t.Errorf("%s was written past the limit (%v)", tc.at, err)
			}
		})
	}
}
