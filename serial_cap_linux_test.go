package smartvm

import (
	"bytes"
	"context"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// A chatty guest's serial.log stays within WithSerialLogLimit: the old output is released,
// the tail is kept, and the console streams start at the oldest byte kept.
func TestSerialLogLimit(t *testing.T) {
	const limit = 4096
	mgr, _, kernel := fakeSetup(t, WithSerialLogLimit(limit))
	m := start(t, mgr, guestSpec(kernel, testguest.ModeCounter))
	defer m.Close()
	deadline := time.Now().Add(waitLong)
	for {
		fi, err := os.Stat(m.ConsolePath())
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 6*limit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial.log reached only %d bytes", fi.Size())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * serialCapEvery)
	fi, err := os.Stat(m.ConsolePath())
	if err != nil {
		t.Fatal(err)
	}
	// At most the limit plus a page of rounding, plus what the guest wrote since the last
	// check (a few hundred bytes) and a page of slack for the filesystem's blocks.
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > limit+3*4096 {
		t.Errorf("serial.log of %d bytes uses %d bytes on disk, want about %d", fi.Size(), used, limit)
	}
	for name, open := range map[string]func() (io.ReadCloser, error){"ConsoleLog": m.ConsoleLog, "Console": m.Console} {
		r, err := open()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := io.ReadFull(r, buf)
		r.Close()
		if err != nil || n != len(buf) {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.IndexByte(buf, 0) >= 0 || !bytes.Contains(buf, []byte(testguest.TickPrefix)) {
			t.Errorf("%s starts with %q, want the kept tick lines", name, buf)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
