package testutil

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// leakWait bounds how long CheckLeaks waits for goroutines and child processes to finish.
const leakWait = 2 * time.Second

// CheckLeaks fails the test if, once it and its other cleanups have finished, the test
// process has child processes or goroutines that it did not have when CheckLeaks was called.
// It waits up to 2 s for them to end, ignores goroutines of the runtime, testing and
// os/signal packages, and prints the leaked goroutines' stacks and the children's command
// lines. Child processes are found through /proc (Linux); elsewhere only goroutines are checked.
//
// Call it first in a test, so that its check runs after the cleanups registered later.
// Goroutines and children belong to the whole process, so the test must not run alongside
// other tests: CheckLeaks uses t.Chdir (to the current directory), which makes the testing
// package panic if the test or one of its ancestors calls t.Parallel. Parallel subtests of the
// test itself are fine; they end before the check.
func CheckLeaks(t testing.TB) {
	t.Helper()
	checkLeaks(t, leakWait)
}

func checkLeaks(t testing.TB, wait time.Duration) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("check leaks: %v", err)
	}
	t.Chdir(wd) // forbids t.Parallel, see above
	before := goroutineIDs(goroutines())
	kids, kidsErr := children()
	if kidsErr != nil && !errors.Is(kidsErr, errors.ErrUnsupported) {
		t.Fatalf("check leaks: %v", kidsErr)
	}
	beforeKids := make(map[int]bool)
	for _, c := range kids {
		beforeKids[c.pid] = true
	}
	t.Cleanup(func() {
		var leakedG []goroutine
		var leakedC []child
		deadline := time.Now().Add(wait)
		for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
			leakedG = newGoroutines(goroutines(), before)
			leakedC = leakedC[:0]
			if kidsErr == nil {
				now, err := children()
				if err != nil {
					t.Errorf("check leaks: %v", err)
				}
				for _, c := range now {
					if !beforeKids[c.pid] {
						leakedC = append(leakedC, c)
					}
				}
			}
			if len(leakedG) == 0 && len(leakedC) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(pause)
		}
		for _, c := range leakedC {
			t.Errorf("leaked child process %d (%s, state %s): %s", c.pid, c.comm, c.state, c.cmdline)
		}
		if len(leakedG) > 0 {
			var b strings.Builder
			for _, g := range leakedG {
				b.WriteString("\n" + g.stack + "\n")
			}
			t.Errorf("%d leaked goroutines:%s", len(leakedG), b.String())
		}
	})
}

// goroutine is one goroutine of runtime.Stack's dump.
type goroutine struct {
	id    uint64
	entry string // the function it started in, or the one that created it when frames were elided
	stack string // its part of the dump
}

// goroutines returns every goroutine of the process except the calling one.
func goroutines() []goroutine {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := parseGoroutines(string(buf))
	if len(gs) > 0 {
		gs = gs[1:] // runtime.Stack dumps the calling goroutine first
	}
	return gs
}

// parseGoroutines parses a dump in runtime.Stack's format: blocks separated by blank lines,
// each a header "goroutine N [state]:", then a function line and a "\tfile:line" line per
// frame, innermost first, and last "created by F in goroutine M" with its file line.
func parseGoroutines(dump string) []goroutine {
	var out []goroutine
	for _, block := range strings.Split(strings.TrimSpace(dump), "\n\n") {
		lines := strings.Split(block, "\n")
		f := strings.Fields(lines[0])
		if len(f) < 2 || f[0] != "goroutine" {
			continue
		}
		id, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		g := goroutine{id: id, stack: block}
		for _, l := range lines[1:] {
			switch {
			case strings.HasPrefix(l, "\t"), strings.HasPrefix(l, "..."):
			case strings.HasPrefix(l, "created by "):
				if g.entry == "" || strings.Contains(block, "...additional frames elided...") {
					creator, _, _ := strings.Cut(strings.TrimPrefix(l, "created by "), " in goroutine ")
					g.entry = creator
				}
			default:
				// A goroutine that has not run yet shows runtime.goexit as its outermost
				// frame, below the function it will start in.
				if fn := funcName(l); fn != "runtime.goexit" {
					g.entry = fn
				}
			}
		}
		out = append(out, g)
	}
	return out
}

// funcName strips the argument list from a frame's function line: "pkg.(*T).M(0x1, ...)".
func funcName(line string) string {
	if i := strings.LastIndex(line, "("); i > 0 && strings.HasSuffix(line, ")") {
		return line[:i]
	}
	return line
}

func goroutineIDs(gs []goroutine) map[uint64]bool {
	ids := make(map[uint64]bool, len(gs))
	for _, g := range gs {
		ids[g.id] = true
	}
	return ids
}

// ignoredEntries are the packages whose goroutines CheckLeaks never reports: the runtime's,
// the testing package's (test runners, alarms) and os/signal's signal loop, which once
// started lasts for the life of the process.
var ignoredEntries = []string{"runtime.", "runtime/", "testing.", "os/signal."}

// newGoroutines returns the goroutines of now that are not in before and not ignored.
func newGoroutines(now []goroutine, before map[uint64]bool) []goroutine {
	return slices.DeleteFunc(now, func(g goroutine) bool {
		return before[g.id] || slices.ContainsFunc(ignoredEntries, func(p string) bool { return strings.HasPrefix(g.entry, p) })
	})
}

// child is a child process of the test process.
type child struct {
	pid     int
	comm    string
	state   string
	cmdline string
}
