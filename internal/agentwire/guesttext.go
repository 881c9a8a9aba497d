package agentwire

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxGuestText is the most bytes of a text the guest sends (an error, a reason, a version)
// that the host keeps; the rest is cut.
const MaxGuestText = 4 << 10

// GuestText makes s, a text written by the guest, safe to show on the user's terminal and
// to keep: control characters (escape sequences, carriage returns, newlines) and bytes that
// are not UTF-8 written as \xNN (C1 controls as \u00NN, as the CLI's terminal filter writes
// them), and at most MaxGuestText bytes of that, then "..." when cut.
func GuestText(s string) string {
	if len(s) <= MaxGuestText && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		w := s[i : i+n]
		switch {
		case r == utf8.RuneError && n <= 1, r < utf8.RuneSelf && unicode.IsControl(r):
			w = fmt.Sprintf(`\x%02x`, s[i])
		case unicode.IsControl(r):
			w = fmt.Sprintf(`\u%04x`, r)
		}
		if b.Len()+len(w) > MaxGuestText {
			b.WriteString("...")
			break
		}
		b.WriteString(w)
		i += n
	}
	return b.String()
}
