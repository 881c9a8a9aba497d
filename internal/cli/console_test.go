package cli

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testutil"
)

// A guest that does not read its serial input never holds up the escape sequence: input it
// cannot take is dropped, and what it can take arrives in order.
func TestGuestInputNeverBlocks(t *testing.T) {
	t.Parallel()
	r, w := io.Pipe()
	defer r.Close()
	g := newGuestInput(w, func() {})
	defer g.close()
	typed := strings.Repeat("x", 100) + strings.Repeat("y", 10*guestQueue) + "\x1dq"
	in := &chunkReader{s: typed, n: 10}
	select {
	case <-watchInput(in, g, func() {}):
	case <-time.After(10 * time.Second):
		t.Fatal("the escape sequence was not seen while the guest did not read")
	}
	// Now the guest reads: the first writes arrive whole and in order.
	buf := make([]byte, 100)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != strings.Repeat("x", 100) {
		t.Errorf("the guest read %q first", buf)
	}
}

// chunkReader reads s n bytes at a time.
type chunkReader struct {
	s string
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.s == "" {
		return 0, io.EOF
	}
	k := min(len(p), c.n, len(c.s))
	copy(p, c.s[:k])
	c.s = c.s[k:]
	return k, nil
}

// Input goes to the guest as typed, minus the escape sequence; EOF ends the watch without
// an escape.
func TestWatchInputForwards(t *testing.T) {
	t.Parallel()
	var got testutil.SyncBuffer
	escaped := watchInput(strings.NewReader("ls -l\r\x1d\x1d\x03"), &got, func() {})
	want := "ls -l\r\x1d\x03"
	deadline := time.Now().Add(10 * time.Second)
	for len(got.String()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got.String() != want {
		t.Errorf("the guest got %q, want %q", got.String(), want)
	}
	select {
	case <-escaped:
		t.Fatal("escaped without the escape sequence")
	default:
	}
}

func TestRestoreOnPanic(t *testing.T) {
	t.Parallel()
	restored := false
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the panic to go on", r)
			}
		}()
		defer restoreOnPanic(func() { restored = true })
		panic("boom")
	}()
	if !restored {
		t.Error("the terminal was not restored on panic")
	}
	restored = false
	func() {
		defer restoreOnPanic(func() { restored = true })
	}()
	if restored {
		t.Error("the terminal was restored without a panic")
	}
}
