package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/baseimage"
)

// Conversion phases show with their elapsed time: on a pipe, a line when each begins, every
// ten seconds, and when it ends.
func TestProgressPhases(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	p := newProgress(&out)
	p.update("u.squashfs", 10, 10)
	for _, e := range []struct {
		phase   string
		elapsed time.Duration
		ended   bool
	}{
		{baseimage.PhaseUnpack, 0, false},
		{baseimage.PhaseUnpack, 1 * time.Second, false},
		{baseimage.PhaseUnpack, 10*time.Second + 3*time.Millisecond, false},
		{baseimage.PhaseUnpack, 12*time.Second + 340*time.Millisecond, true},
		{baseimage.PhaseMkfs, 0, false},
		{baseimage.PhaseMkfs, 21 * time.Second, true},
	} {
		p.phase("u.squashfs", e.phase, e.elapsed, e.ended)
	}
	want := `u.squashfs: 100% (10 B of 10 B)
u.squashfs: unpacking
u.squashfs: unpacking (10s)
u.squashfs: unpacked in 12.3s
u.squashfs: building the ext4 root filesystem
u.squashfs: built the ext4 root filesystem in 21s
`
	if out.String() != want {
		t.Errorf("progress printed:\n%s\nwant:\n%s", out.String(), want)
	}
}
