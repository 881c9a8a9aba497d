package testutil

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that records failures and cleanups instead of acting on them, so
// the helpers' failures can be tested. Methods it does not override go to the real test.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	fatal    bool
	cleanups []func()
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.mu.Lock()
	r.fatal = true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

// run calls f (which may call Fatalf) on its own goroutine and waits for it.
func (r *recorder) run(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// finish runs the recorded cleanups, last first, and returns the failures.
func (r *recorder) finish() []string {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.run(r.cleanups[i])
	}
	r.cleanups = nil
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs
}

func leakyWorker(stop chan struct{}) { <-stop }

func TestCheckLeaksClean(t *testing.T) {
	rec := &recorder{TB: t}
	checkLeaks(rec, 2*time.Second)
	// A goroutine and a process that end on their own, after the test body returns.
	go time.Sleep(50 * time.Millisecond)
	cmd := exec.Command("sleep", "0.05")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	if errs := rec.finish(); len(errs) > 0 {
		t.Errorf("unexpected failures: %q", errs)
	}
}

func TestCheckLeaksGoroutine(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	go leakyWorker(stop) // there before the check: not a leak

	rec := &recorder{TB: t}
	checkLeaks(rec, 100*time.Millisecond)
	go leakyWorker(stop)
	errs := rec.finish()
	if len(errs) != 1 || !strings.Contains(errs[0], "1 leaked goroutines") || !strings.Contains(errs[0], "testutil.leakyWorker") {
		t.Errorf("failures %q, want one naming leakyWorker", errs)
	}
}

func TestCheckLeaksChild(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skipf("child processes are found through /proc: %v", err)
	}
	start := func() *exec.Cmd {
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		return cmd
	}
	start() // there before the check: not a leak

	rec := &recorder{TB: t}
	checkLeaks(rec, 100*time.Millisecond)
	leaked := start()
	errs := rec.finish()
	want := "leaked child process " + strconv.Itoa(leaked.Process.Pid) + " (sleep, state S): sleep 30"
	if len(errs) != 1 || errs[0] != want {
		t.Errorf("failures %q, want [%q]", errs, want)
	}

	// A child that exited but was never waited for is a leak too.
	rec = &recorder{TB: t}
	checkLeaks(rec, 100*time.Millisecond)
	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	errs = rec.finish()
	zombie.Wait()
	if len(errs) != 1 || !strings.Contains(errs[0], "state Z") {
		t.Errorf("failures %q, want one for a zombie", errs)
	}
}

func TestCheckLeaksRefusesParallel(t *testing.T) {
	t.Run("inside a parallel test", func(t *testing.T) {
		t.Parallel()
		defer func() {
			if recover() == nil {
				t.Error("CheckLeaks in a parallel test did not panic")
			}
		}()
		CheckLeaks(t)
	})
	t.Run("then t.Parallel", func(t *testing.T) {
		CheckLeaks(t)
		defer func() {
			if recover() == nil {
				t.Error("t.Parallel after CheckLeaks did not panic")
			}
		}()
		t.Parallel()
	})
}

func TestParseGoroutines(t *testing.T) {
	dump := `goroutine 1 [running]:
main.main()
	/src/main.go:10 +0x1d

goroutine 7 [chan receive]:
example.com/p.(*Pool[...]).worker(0xc000010000, {0x1, 0x2})
	/src/p.go:30 +0x25
example.com/p.New[...].func1()
	/src/p.go:12 +0x2a
created by example.com/p.New[...] in goroutine 1
	/src/p.go:11 +0x85

goroutine 9 [select]:
example.com/q.deep(...)
	/src/q.go:3
...additional frames elided...
created by example.com/q.Start in goroutine 1
	/src/q.go:9 +0x40
`
	gs := parseGoroutines(dump)
	want := []struct {
		id    uint64
		entry string
	}{{1, "main.main"}, {7, "example.com/p.New[...].func1"}, {9, "example.com/q.Start"}}
	if len(gs) != len(want) {
		t.Fatalf("parsed %d goroutines, want %d: %+v", len(gs), len(want), gs)
	}
	for i, w := range want {
		if gs[i].id != w.id || gs[i].entry != w.entry {
			t.Errorf("goroutine %d: id %d entry %q, want %d %q", i, gs[i].id, gs[i].entry, w.id, w.entry)
		}
	}
	if !strings.HasPrefix(gs[1].stack, "goroutine 7 [chan receive]:\n") || !strings.HasSuffix(gs[1].stack, "+0x85") {
		t.Errorf("stack of goroutine 7: %q", gs[1].stack)
	}
	kept := newGoroutines([]goroutine{{id: 1, entry: "main.main"}, {id: 2, entry: "testing.tRunner"}, {id: 3, entry: "os/signal.loop"}, {id: 4, entry: "example.com/p.f"}}, map[uint64]bool{1: true})
	if len(kept) != 1 || kept[0].id != 4 {
		t.Errorf("newGoroutines kept %+v, want only goroutine 4", kept)
	}
}

func TestNoFilesUnder(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{filepath.Join(dir, "absent"), dir} {
		rec := &recorder{TB: t}
		if !NoFilesUnder(rec, p) || len(rec.finish()) > 0 {
			t.Errorf("%s: reported as not clean: %q", p, rec.errs)
		}
	}

	os.MkdirAll(filepath.Join(dir, "vms", "a"), 0o700)
	os.WriteFile(filepath.Join(dir, "vms", "state.json"), nil, 0o600)
	os.Symlink("state.json", filepath.Join(dir, "vms", "link"))
	l, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	rec := &recorder{TB: t}
	if NoFilesUnder(rec, dir) {
		t.Error("NoFilesUnder reported a clean directory")
	}
	errs := rec.finish()
	want := dir + " should be empty or absent; left behind:\n  api.sock (socket)\n  vms/\n  vms/a/\n  vms/link (symlink)\n  vms/state.json"
	if len(errs) != 1 || errs[0] != want {
		t.Errorf("failures %q, want [%q]", errs, want)
	}

	many := t.TempDir()
	for i := range maxListed + 3 {
		os.WriteFile(filepath.Join(many, fmt.Sprintf("f%02d", i)), nil, 0o600)
	}
	rec = &recorder{TB: t}
	NoFilesUnder(rec, many)
	if errs := rec.finish(); len(errs) != 1 || !strings.HasSuffix(errs[0], "f49\n  ... and 3 more") {
		t.Errorf("failures %q, want the list cut after %d entries", errs, maxListed)
	}

	rec = &recorder{TB: t}
	NoFilesUnder(rec, filepath.Join(dir, "vms", "state.json"))
	if errs := rec.finish(); len(errs) != 1 || !strings.Contains(errs[0], "is not a directory") {
		t.Errorf("failures %q for a file", errs)
	}
}

func TestGolden(t *testing.T) {
	if flag.Lookup("update") == nil {
		t.Fatal("the -update flag is not registered")
	}
	t.Chdir(t.TempDir())
	setUpdate := func(v bool) {
		old := *update
		*update = v
		t.Cleanup(func() { *update = old })
	}
	golden := func(name, got string) []string {
		rec := &recorder{TB: t}
		rec.run(func() { Golden(rec, name, []byte(got)) })
		return rec.finish()
	}

	setUpdate(false)
	if errs := golden("out", "a\nb\n"); len(errs) != 1 || !strings.Contains(errs[0], "testdata/out.golden does not exist: run the test with -update") {
		t.Errorf("missing file: failures %q", errs)
	}
	setUpdate(true)
	for _, name := range []string{"out", "cli/run"} {
		if errs := golden(name, "a\nb\n"); len(errs) > 0 {
			t.Errorf("update %s: failures %q", name, errs)
		}
	}
	if b, err := os.ReadFile(filepath.Join("testdata", "cli", "run.golden")); err != nil || string(b) != "a\nb\n" {
		t.Errorf("written golden file: %q, %v", b, err)
	}
	setUpdate(false)
	if errs := golden("out", "a\nb\n"); len(errs) > 0 {
		t.Errorf("equal output: failures %q", errs)
	}
	if errs := golden("out", "a\nc\n"); len(errs) != 1 || !regexp.MustCompile(`(?m)^-.*"b\\n",$`).MatchString(errs[0]) || !regexp.MustCompile(`(?m)^\+.*"c\\n",$`).MatchString(errs[0]) {
		t.Errorf("different output: failures %q, want a diff", errs)
	}
	for _, bad := range []string{"", "../out", "/tmp/out"} {
		if errs := golden(bad, ""); len(errs) != 1 || !strings.Contains(errs[0], "must be a relative path") {
			t.Errorf("name %q: failures %q", bad, errs)
		}
	}
}

// TestCheckLeaksRealTest runs TestLeakHelper in a child test process, so CheckLeaks works on a
// real *testing.T: a goroutine left running fails the test, and one stopped by a cleanup
// registered after CheckLeaks does not.
func TestCheckLeaksRealTest(t *testing.T) {
	for mode, wantFail := range map[string]bool{"leak": true, "clean": false} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLeakHelper$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), leakHelperEnv+"="+mode)
		out, err := cmd.CombinedOutput()
		failed := err != nil
		if failed != wantFail || wantFail && !strings.Contains(string(out), "1 leaked goroutines") {
			t.Errorf("%s: err %v, output:\n%s", mode, err, out)
		}
	}
}

const leakHelperEnv = "SMARTVM_TESTUTIL_LEAK_HELPER"

func TestLeakHelper(t *testing.T) {
	mode := os.Getenv(leakHelperEnv)
	if mode == "" {
		t.Skip("run by TestCheckLeaksRealTest")
	}
	checkLeaks(t, 100*time.Millisecond)
	stop := make(chan struct{})
	go leakyWorker(stop)
	if mode == "clean" {
		t.Cleanup(func() { close(stop) })
	}
}
