package agentwire

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestGuestText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"no such file", "no such file"},
		{"héllo", "héllo"},
		{"bad\x1b[2Jclear\r\nline\a", `bad\x1b[2Jclear\x0d\x0aline\x07`},
		{"nul\x00 and bad \xff utf8", `nul\x00 and bad \xff utf8`},
		{"c1 \u009b control", `c1 \u009b control`},
	} {
		if got := GuestText(tc.in); got != tc.want {
			t.Errorf("GuestText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := strings.Repeat("é", MaxGuestText) // 2 bytes a rune: the cut splits none or one
	got := GuestText(long)
	if !strings.HasSuffix(got, "...") || len(got) > MaxGuestText+3 || !utf8.ValidString(got) || strings.ContainsRune(got, utf8.RuneError) {
		t.Errorf("GuestText of %d bytes: %d bytes, valid %v, suffix %q", len(long), len(got), utf8.ValidString(got), got[len(got)-5:])
	}
	odd := "x" + strings.Repeat("é", MaxGuestText) // the cut splits a rune
	if got := GuestText(odd); strings.ContainsRune(got, utf8.RuneError) || !utf8.ValidString(got) {
		t.Errorf("GuestText kept a split rune: ...%q", got[len(got)-8:])
	}
}

func TestExitStatusChecked(t *testing.T) {
	for _, tc := range []struct{ in, want ExitStatus }{
		{ExitStatus{Code: 3}, ExitStatus{Code: 3}},
		{ExitStatus{Code: 137, Signal: 9}, ExitStatus{Code: 137, Signal: 9}},
		{ExitStatus{Code: 127, Error: "not found\x1b]0;x\a"}, ExitStatus{Code: 127, Error: `not found\x1b]0;x\x07`}},
		{ExitStatus{Code: 256}, ExitStatus{Code: 255}},
		{ExitStatus{Code: -1}, ExitStatus{Code: 255}},
		{ExitStatus{Code: 0, Signal: 1 << 20}, ExitStatus{Code: 255}},
	} {
		if got := tc.in.checked(); got != tc.want {
			t.Errorf("%+v.checked() = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}
