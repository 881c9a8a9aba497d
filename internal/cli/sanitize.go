package cli

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// terminalSafe writes a guest's output with the control characters a terminal would act on
// made visible: a guest must not be able to move the cursor, retitle the window or answer
// back through the operator's terminal. Newlines, tabs and carriage returns pass, and so does
// valid UTF-8 text; every other C0 or C1 control and every byte that is not UTF-8 is written
// as a \xNN escape.
type terminalSafe struct {
	w       io.Writer
	pending []byte // the start of a UTF-8 sequence cut by the end of a Write
}

func (s *terminalSafe) Write(p []byte) (int, error) {
	buf := append(s.pending, p...)
	s.pending = nil
	out := make([]byte, 0, len(buf))
	for i := 0; i < len(buf); {
		c := buf[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != 0x7f || c == '\n' || c == '\t' || c == '\r' {
				out = append(out, c)
			} else {
				out = fmt.Appendf(out, `\x%02x`, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(buf[i:])
		if r == utf8.RuneError && n <= 1 {
			if !utf8.FullRune(buf[i:]) {
				s.pending = append([]byte(nil), buf[i:]...) // finish it with the next Write
				break
			}
			out = fmt.Appendf(out, `\x%02x`, c)
			i++
			continue
		}
		if r >= 0x80 && r <= 0x9f { // C1 controls (CSI, OSC, ...)
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, buf[i:i+n]...)
		}
		i += n
	}
	if _, err := s.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
