package agentwire

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxGuestText is the most bytes of a text the guest sends (an error, a reason, a version)
// that the host keeps; the rest is cut.
const MaxGuestText = 4 << 10

// GuestText makes s, a text written by the guest, safe to show on the user's terminal and
// to keep: valid UTF-8, control characters (escape sequences, carriage returns, newlines)
// written as Go escapes, and at most MaxGuestText bytes of that, then "..." when cut.
func GuestText(s string) string {
	if len(s) <= MaxGuestText && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		w := string(r) // an invalid byte reads as RuneError: written as U+FFFD
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			w = q[1 : len(q)-1]
		}
		if b.Len()+len(w) > MaxGuestText {
			b.WriteString("...")
			break
		}
		b.WriteString(w)
	}
	return b.String()
}
