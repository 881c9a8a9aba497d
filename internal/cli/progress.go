package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/smartvm/smartvm/baseimage"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	tty := false
	withFD(f, func(fd int) { tty = term.IsTerminal(fd) })
	return tty
}

// withFD runs fn with f's file descriptor. Unlike f.Fd, it leaves the descriptor's mode
// alone, so a pending read on f can still be interrupted by closing it.
func withFD(f *os.File, fn func(fd int)) {
	rc, err := f.SyscallConn()
	if err != nil {
		return // closed: fn is not called
	}
	_ = rc.Control(func(fd uintptr) { fn(int(fd)) }) // fails only when f is closed
}

// progress shows download progress on stderr: a progress bar per file when stderr is a
// terminal, otherwise plain lines at every tenth of the file (every 64 MiB when the size is
// unknown). It is safe for concurrent use.
type progress struct {
	w   io.Writer
	tty bool

	mu      sync.Mutex
	file    string // the file being shown
	bar     *progressbar.ProgressBar
	lastPct int64 // plain mode: last tenth printed, -1 before the first line
	lastMiB int64 // plain mode, unknown size: last 64 MiB mark printed
	shown   bool  // something was printed
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w)}
}

const unknownSizeStep = 64 << 20

// update records that done of total bytes (total < 0: unknown) of file have arrived.
func (p *progress) update(file string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shown = true
	if file != p.file {
		p.finishLocked()
		p.file = file
		p.lastPct, p.lastMiB = -1, 0
		if p.tty {
			p.bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(file),
				progressbar.OptionShowBytes(true),
				progressbar.OptionUseIECUnits(true),
				progressbar.OptionShowCount(),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
			)
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(done) // writes to stderr; a failed write is not worth failing a download
		return
	}
	switch {
	case total > 0:
		pct := done * 10 / total
		if pct > p.lastPct {
			p.lastPct = pct
			fmt.Fprintf(p.w, "%s: %d%% (%s of %s)\n", file, pct*10, formatBytes(done), formatBytes(total))
		}
	case done-p.lastMiB >= unknownSizeStep || p.lastPct < 0:
		p.lastPct = 0
		p.lastMiB = done
		fmt.Fprintf(p.w, "%s: %s\n", file, formatBytes(done))
	}
}

// phaseWords says what each conversion phase does, as it runs and once done.
var phaseWords = map[string][2]string{
	baseimage.PhaseUnpack: {"unpacking", "unpacked"},
	baseimage.PhaseKey:    {"installing the SSH key", "installed the SSH key"},
	baseimage.PhaseMkfs:   {"building the ext4 root filesystem", "built the ext4 root filesystem"},
	baseimage.PhaseCheck:  {"checking the ext4 root filesystem", "checked the ext4 root filesystem"},
}

// plainPhaseStep is how often a plain (not terminal) progress says a phase still runs.
const plainPhaseStep = 10 * time.Second

// phase shows a conversion phase of file: on a terminal one line that counts the seconds and
// ends with the time taken; otherwise a line when it begins, every plainPhaseStep while it
// runs, and when it ends.
func (p *progress) phase(file, phase string, elapsed time.Duration, ended bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.shown = true
	p.finishLocked()
	p.file = ""
	words, ok := phaseWords[phase]
	if !ok {
		words = [2]string{phase, phase + " done"}
	}
	secs := elapsed.Round(time.Second)
	switch {
	case ended && p.tty:
		fmt.Fprintf(p.w, "\r\033[K%s: %s in %s\n", file, words[1], elapsed.Round(100*time.Millisecond))
	case ended:
		fmt.Fprintf(p.w, "%s: %s in %s\n", file, words[1], elapsed.Round(100*time.Millisecond))
	case p.tty:
		fmt.Fprintf(p.w, "\r\033[K%s: %s %s", file, words[0], secs)
	case elapsed == 0:
		fmt.Fprintf(p.w, "%s: %s\n", file, words[0])
	case elapsed%plainPhaseStep < time.Second:
		fmt.Fprintf(p.w, "%s: %s (%s)\n", file, words[0], secs)
	}
}

// noteIfIdle prints line unless progress has been shown already.
func (p *progress) noteIfIdle(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.shown {
		p.shown = true
		fmt.Fprintln(p.w, line)
	}
}

// finish ends the current file's bar.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked()
	p.file = ""
}

func (p *progress) finishLocked() {
	if p.bar != nil {
		if !p.bar.IsFinished() {
			_ = p.bar.Exit() // leaves the partial bar on screen and ends its line
		}
		p.bar = nil
	}
}

// formatBytes prints a size with a binary unit: 512 B, 3.0 KiB, 25.2 MiB, 1.0 GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
