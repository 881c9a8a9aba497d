package cli

import (
	"bytes"
	"io"
	"os"
	"sync"

	"golang.org/x/term"
)

// The console escape: Ctrl-] then q (or .) stops a foreground VM. Ctrl-] twice sends one
// Ctrl-] to the guest; Ctrl-] then any other key sends both.
const (
	escapeByte = 0x1d // Ctrl-]
	escapeHelp = "Ctrl-] q"
)

// escapeFilter scans console input for the escape sequence. Bytes that are not part of it go
// to out (nil: dropped).
type escapeFilter struct {
	out     io.Writer
	pending bool // the last byte was Ctrl-]
}

// feed processes input and reports whether the escape sequence was typed.
func (f *escapeFilter) feed(b []byte) (stop bool) {
	var fwd []byte
	for _, c := range b {
		switch {
		case f.pending:
			f.pending = false
			switch c {
			case 'q', 'Q', '.':
				f.forward(fwd)
				return true
			case escapeByte:
				fwd = append(fwd, escapeByte)
			default:
				fwd = append(fwd, escapeByte, c)
			}
		case c == escapeByte:
			f.pending = true
		default:
			fwd = append(fwd, c)
		}
	}
	f.forward(fwd)
	return false
}

func (f *escapeFilter) forward(b []byte) {
	if f.out != nil && len(b) > 0 {
		_, _ = f.out.Write(b) // the guest's input is best effort, like a serial line
	}
}

// watchInput reads in until EOF, feeding the escape filter, and closes the returned channel
// when the escape sequence is typed. EOF on in (input from a file or /dev/null) ends the
// watch without stopping anything. The reading goroutine stays blocked in Read until input
// arrives or the process exits: a terminal read cannot be interrupted.
func watchInput(in io.Reader, guest io.Writer) <-chan struct{} {
	escaped := make(chan struct{})
	go func() {
		f := &escapeFilter{out: guest}
		buf := make([]byte, 256)
		for {
			n, err := in.Read(buf)
			if n > 0 && f.feed(buf[:n]) {
				close(escaped)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return escaped
}

// rawTerminal puts the terminal on in into raw mode, when in is one, and returns the function
// that restores it.
func rawTerminal(in io.Reader) (restore func(), ok bool) {
	f, isFile := in.(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return func() {}, false
	}
	old, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return func() {}, false
	}
	var once sync.Once
	return func() { once.Do(func() { _ = term.Restore(int(f.Fd()), old) }) }, true
}

// crlfWriter turns "\n" into "\r\n" for a terminal in raw mode, whose output processing is
// off; a "\r\n" the guest sent stays as it is.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	var out bytes.Buffer
	for _, b := range p {
		if b == '\n' && !c.lastCR {
			out.WriteByte('\r')
		}
		out.WriteByte(b)
		c.lastCR = b == '\r'
	}
	if _, err := c.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}
