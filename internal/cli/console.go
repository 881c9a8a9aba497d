package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"golang.org/x/term"

	"github.com/smartvm/smartvm"
)

// The console escape: Ctrl-] then q (or .) ends the console session (run stops the VM,
// attach leaves it running). Ctrl-] twice sends one Ctrl-] to the guest; Ctrl-] then any
// other key sends both.
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
// arrives, in is closed or the process exits: a read of a terminal in blocking mode cannot
// be interrupted. A panic in it restores the terminal first.
func watchInput(in io.Reader, guest io.Writer, restore func()) <-chan struct{} {
	escaped := make(chan struct{})
	go func() {
		defer restoreOnPanic(restore)
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

// restoreOnPanic, deferred first thing in a goroutine that runs while the terminal is in raw
// mode, restores the terminal before the panic goes on to end the program.
func restoreOnPanic(restore func()) {
	if r := recover(); r != nil {
		restore()
		panic(r)
	}
}

// guestQueue is how many writes guestInput holds for a guest that does not read.
const guestQueue = 64

// guestInput forwards writes to the guest's serial input from a goroutine of its own, so a
// guest that stops reading never holds up the escape sequence: writes that do not fit in its
// queue are dropped, as a serial line drops what it cannot take.
type guestInput struct {
	w     io.Writer
	queue chan []byte
	stop  chan struct{}
	once  sync.Once
}

func newGuestInput(w io.Writer, restore func()) *guestInput {
	g := &guestInput{w: w, queue: make(chan []byte, guestQueue), stop: make(chan struct{})}
	go func() {
		defer restoreOnPanic(restore)
		for {
			select {
			case b := <-g.queue:
				if _, err := g.w.Write(b); err != nil {
					return // the VM ended, or the session did
				}
			case <-g.stop:
				return
			}
		}
	}()
	return g
}

// Write queues p for the guest; it never blocks and never fails.
func (g *guestInput) Write(p []byte) (int, error) {
	select {
	case <-g.stop:
	case g.queue <- slices.Clone(p):
	default:
	}
	return len(p), nil
}

// close stops forwarding. A write in progress ends when the writer is closed.
func (g *guestInput) close() { g.once.Do(func() { close(g.stop) }) }

// rawTerminal puts the terminal on in into raw mode, when in is one, and returns the function
// that restores it (safe to call more than once, from any goroutine).
func rawTerminal(in io.Reader) (restore func(), ok bool) {
	f, isFile := in.(*os.File)
	if !isFile || !isTerminal(f) {
		return func() {}, false
	}
	var old *term.State
	var err error
	withFD(f, func(fd int) { old, err = term.MakeRaw(fd) })
	if old == nil || err != nil {
		return func() {}, false
	}
	var once sync.Once
	return func() {
		once.Do(func() { withFD(f, func(fd int) { _ = term.Restore(fd, old) }) })
	}, true
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

// consoleEnd is why a console session ended.
type consoleEnd int

const (
	endFailed consoleEnd = iota // the session could not start; see the error
	endVM                       // the VM ended
	endSignal                   // ctx ended: SIGINT or SIGTERM
	endEscape                   // the escape sequence was typed
)

// consoleSession is how a command shows a VM's serial console.
type consoleSession struct {
	// banner is printed on stderr before the session when stdin is a terminal, followed by
	// what the escape sequence does.
	banner string
	// escapeDoes completes "Ctrl-] q ..." in the banner, such as "stops it".
	escapeDoes string
	// stop, when set, is called when the escape sequence is typed or ctx ends, and the
	// session then shows the console until the VM has ended. When nil, the session ends
	// there and the VM runs on.
	stop func() error
	// stopNote is printed on stderr, when stdin is a terminal, before stop is called.
	stopNote string
	// skip is how much of the console's start not to show.
	skip int64
}

// runConsole connects this process's stdio to m's serial console: the guest's output goes to
// stdout, stdin goes to the guest's serial input, and the escape sequence ends the session.
// When stdin is a terminal it is in raw mode for the session, so keys (Ctrl-C included) reach
// the guest as typed, and it is restored however the session ends, panics included. It
// returns why the session ended and stop's error, or endFailed and why the session could not
// start.
func (a *app) runConsole(ctx context.Context, m *smartvm.Machine, s consoleSession) (consoleEnd, error) {
	con, err := m.Console()
	if err != nil {
		return endFailed, err
	}
	defer con.Close()
	if err := skipConsole(con, s.skip); err != nil {
		return endFailed, err
	}
	var guestIn io.Writer = io.Discard // a guest that has ended takes no input
	in, err := m.ConsoleInput()
	switch {
	case err == nil:
		defer in.Close()
		guestIn = in
	case errors.Is(err, smartvm.ErrNoConsoleInput):
		return endFailed, fmt.Errorf("%w; it was started without serial input (by an older smartvm, or a program using the library)", err)
	case !errors.Is(err, smartvm.ErrNotRunning):
		return endFailed, err
	}

	interactive := isTerminal(a.stdin)
	if interactive {
		fmt.Fprintf(a.stderr, "smartvm: %s; %s %s\n", s.banner, escapeHelp, s.escapeDoes)
	}
	restore, raw := rawTerminal(a.stdin)
	defer restore()
	out, notes := a.stdout, a.stderr
	if raw && isTerminal(a.stdout) {
		out = &crlfWriter{w: a.stdout}
	}
	if raw && isTerminal(a.stderr) {
		notes = &crlfWriter{w: a.stderr}
	}

	guest := newGuestInput(guestIn, restore)
	defer guest.close()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer restoreOnPanic(restore)
		_, _ = io.Copy(out, con) // ends at the VM's end, or when con is closed
	}()
	escaped := watchInput(a.stdin, guest, restore)

	end := endVM
	select {
	case <-m.Done():
	case <-ctx.Done():
		end = endSignal
	case <-escaped:
		end = endEscape
	}
	var stopErr error
	switch {
	case end == endVM:
	case s.stop != nil:
		if interactive && s.stopNote != "" {
			fmt.Fprintf(notes, "\nsmartvm: %s\n", s.stopNote)
		}
		stopErr = s.stop()
	default:
		con.Close()
	}
	<-copied
	restore()
	return end, stopErr
}

// skipConsole reads past the first n bytes of a console stream.
func skipConsole(con io.Reader, n int64) error {
	if n <= 0 {
		return nil
	}
	if _, err := io.CopyN(io.Discard, con, n); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read console: %w", err)
	}
	return nil
}
