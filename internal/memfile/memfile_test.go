package memfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sparse writes a file of n pages where the pages in data hold their byte.
func sparse(t *testing.T, n int, data map[int]byte) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(n * page)); err != nil {
		t.Fatal(err)
	}
	for i, b := range data {
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, page), int64(i*page)); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestMerge(t *testing.T) {
	base := sparse(t, 64, map[int]byte{0: 1, 1: 1, 10: 1, 63: 1})
	diff1 := sparse(t, 64, map[int]byte{1: 2, 20: 2})
	diff2 := sparse(t, 64, map[int]byte{20: 3, 30: 3, 63: 3})
	dst := filepath.Join(t.TempDir(), "merged")
	if err := merge(dst, base, []*os.File{diff1, diff2}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]byte{0: 1, 1: 2, 10: 1, 20: 3, 30: 3, 63: 3}
	for i := range 64 {
		if !bytes.Equal(got[i*page:(i+1)*page], bytes.Repeat([]byte{want[i]}, page)) {
			t.Errorf("page %d holds %d, want %d", i, got[i*page], want[i])
		}
	}
	// Holes stay holes: the merged file holds about the pages with data.
	f, _ := os.Open(dst)
	defer f.Close()
	ext, err := Extents(f, 64*page)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ext {
		n += e.Len
	}
	if n > 16*page {
		t.Errorf("merged file has %d bytes of data for 6 pages: holes were filled", n)
	}
	// The inputs are unchanged.
	if id1, _ := Identify(base, false); id1 != mustID(t, sparse(t, 64, map[int]byte{0: 1, 1: 1, 10: 1, 63: 1})) {
		t.Error("the base changed")
	}
	if err := merge(dst, base, nil); err == nil {
		t.Error("merge over an existing file")
	}
	short := sparse(t, 32, nil)
	dst2 := filepath.Join(t.TempDir(), "m2")
	if err := merge(dst2, base, []*os.File{short}); err == nil {
		t.Error("merged a diff of another size")
	}
	if _, err := os.Stat(dst2); !os.IsNotExist(err) {
		t.Errorf("failed merge left %s: %v", dst2, err)
	}
}

func mustID(t *testing.T, f *os.File) Identity {
	id, err := Identify(f, false)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIdentify(t *testing.T) {
	a := sparse(t, 4, map[int]byte{1: 7})
	b := sparse(t, 4, map[int]byte{1: 7, 3: 0}) // an explicit zero page where a has a hole
	c := sparse(t, 4, map[int]byte{2: 7})
	d := sparse(t, 5, map[int]byte{1: 7})
	if mustID(t, a) != mustID(t, b) || mustID(t, a) == mustID(t, c) || mustID(t, a) == mustID(t, d) || mustID(t, a).Size != 4*page {
		t.Errorf("identities %v %v %v %v", mustID(t, a), mustID(t, b), mustID(t, c), mustID(t, d))
	}
	// In a diff, a page of zeros differs from a hole.
	if da, db := mustDiffID(t, a), mustDiffID(t, b); da == db || da != mustDiffID(t, sparse(t, 4, map[int]byte{1: 7})) {
		t.Errorf("diff identities %v %v", da, db)
	}
	// One changed byte changes it.
	if _, err := c.WriteAt([]byte{8}, 2*page+100); err != nil {
		t.Fatal(err)
	}
	if mustID(t, c) == mustID(t, sparse(t, 4, map[int]byte{2: 7})) {
		t.Error("a changed byte kept the identity")
	}
}

func mustDiffID(t *testing.T, f *os.File) Identity {
	id, err := Identify(f, true)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Extents keeps at most its bound of data ranges: a file with more (a snapshot is input, and
// one could hold millions of holes) is refused with an error naming the bound, not listed.
func TestExtentsBound(t *testing.T) {
	f := sparse(t, 16, map[int]byte{0: 1, 2: 1, 4: 1})
	ext, err := Extents(f, 16*page)
	if err != nil || len(ext) != 3 {
		t.Fatalf("Extents: %v %v, want 3 ranges (the filesystem must support SEEK_DATA)", ext, err)
	}
	if ext, err := extents(f, 16*page, 3); err != nil || len(ext) != 3 {
		t.Errorf("3 ranges with a bound of 3: %v %v", ext, err)
	}
	ext, err = extents(f, 16*page, 2)
	if !errors.Is(err, ErrTooManyExtents) || !strings.Contains(err.Error(), "more than 2 ranges") || ext != nil {
		t.Errorf("3 ranges with a bound of 2: %v %v, want ErrTooManyExtents naming the bound", ext, err)
	}
}

// merge is MergeInto a new file dst (which must not exist), removed on failure, as smartvm
// merges into a file it creates.
func merge(dst string, base *os.File, diffs []*os.File) (err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	return MergeInto(out, base, diffs)
}
