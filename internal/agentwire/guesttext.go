package agentwire

import (
	"strconv"
	"strings"
	"unicode"
)

// MaxGuestText is the most bytes of a text the guest sends (an error, a reason, a version)
// that the host keeps; the rest is cut.
const MaxGuestText = 4 << 10

// GuestText makes s, a text written by the guest, safe to show on the user's terminal and
// to keep: at most MaxGuestText bytes, valid UTF-8, and control characters (escape
// sequences, carriage returns, newlines) written as Go escapes.
func GuestText(s string) string {
	cut := len(s) > MaxGuestText
	if cut {
		s = s[:MaxGuestText]
	}
	s = strings.ToValidUTF8(s, string(unicode.ReplacementChar))
	if cut {
		// The cut may have split a rune: drop what ToValidUTF8 made of it.
		s = strings.TrimSuffix(s, string(unicode.ReplacementChar))
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		var b strings.Builder
		for _, r := range s {
			if unicode.IsControl(r) {
				q := strconv.QuoteRune(r)
				b.WriteString(q[1 : len(q)-1])
				continue
			}
			b.WriteRune(r)
		}
		s = b.String()
	}
	if cut {
		s += "..."
	}
	return s
}
