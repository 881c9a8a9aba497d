package logcap

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestTrimKeepsTheTail(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		path, err := os.CreateTemp(dir, "logcap-")
		if err != nil {
			t.Skip(err)
		}
		path.Close()
		t.Cleanup(func() { os.Remove(path.Name()) })
		// The writer, as Firecracker's stdout: O_APPEND, its own descriptor.
		w, err := os.OpenFile(path.Name(), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		trimmer, err := os.OpenFile(path.Name(), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer trimmer.Close()
		line := bytes.Repeat([]byte("0123456789abcde\n"), 256) // 4 KiB
		for range 64 {
			if _, err := w.Write(line); err != nil {
				t.Fatal(err)
			}
		}
		const limit = 10 << 10
		start, err := Trim(trimmer, limit)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(dir), err)
		}
		if start != 64*4096-12<<10 {
			t.Errorf("%s: kept data starts at %d", dir, start)
		}
		if _, err := w.Write([]byte("after\n")); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path.Name())
		if fi.Size() != 64*4096+6 {
			t.Errorf("%s: size %d: the writer's offset moved", dir, fi.Size())
		}
		if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > limit+2*4096+4096 {
			t.Errorf("%s: %d bytes still allocated, want about %d", dir, used, limit)
		}
		r, err := os.Open(path.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if got := DataStart(r, 0); got != start {
			t.Errorf("%s: DataStart(0) = %d, want %d", dir, got, start)
		}
		if got := DataStart(r, start+100); got != start+100 {
			t.Errorf("%s: DataStart inside the data = %d", dir, got)
		}
		tail, _ := io.ReadAll(io.NewSectionReader(r, start, fi.Size()-start))
		if !bytes.HasPrefix(tail, line[:16]) || !bytes.HasSuffix(tail, []byte("e\nafter\n")) {
			t.Errorf("%s: kept %q...%q", dir, tail[:16], tail[len(tail)-16:])
		}
		// Again: nothing new to release, same start.
		if again, err := Trim(trimmer, limit); err != nil || again != start {
			t.Errorf("%s: second trim: %d, %v", dir, again, err)
		}
	}
}
