package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.Main(m, map[string]func([]string) int{
		"firecracker": fakefc.Main,
		"jailer":      fakefc.JailerMain,
		"smartvm":     smartvmMain,
		// Linux only, like the tests that link them.
		"smartvm-nonetadmin": smartvmNoNetAdmin,
		"smartvm-netprobe":   netProbeMain,
	})
}

// smartvmMain is cmd/smartvm's main for the test binary posing as smartvm.
func smartvmMain(args []string) int {
	if os.Getenv(envTestUplink) != "" {
		if err := testutil.AddUplink(); err != nil {
			fmt.Fprintln(os.Stderr, "smartvm test: add an uplink:", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, os.Stdout, os.Stderr)
}

// result is what one in-process run of the CLI printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// cliEnv is the environment a test runs the CLI with: a private HOME and an empty PATH unless
// the test sets them. Keys that start with a NUL byte are settings of the test (see testSelf).
type cliEnv map[string]string

// Keys of cliEnv that are not environment variables.
const (
	// testSelf is the smartvm executable (a link to the test binary).
	testSelf = "\x00self"
	// testNetns, when not empty, starts detached supervisors in network namespaces of their
	// own (see inTestNetns).
	testNetns = "\x00netns"
)

func newEnv(t *testing.T) cliEnv {
	return cliEnv{"HOME": t.TempDir(), "PATH": ""}
}

func (e cliEnv) lookup(k string) (string, bool) {
	v, ok := e[k]
	return v, ok
}

// run runs the CLI in-process with env and args.
func (e cliEnv) run(t *testing.T, args ...string) result {
	t.Helper()
	return e.runCtx(t, t.Context(), args...)
}

func (e cliEnv) runCtx(t *testing.T, ctx context.Context, args ...string) result {
	t.Helper()
	var out, errOut testutil.SyncBuffer
	return e.runIO(ctx, strings.NewReader(""), &out, &errOut, args...)
}

// runIO runs the CLI in-process with the given stdio; stdout and stderr must be safe to read
// while it runs if the caller watches them.
func (e cliEnv) runIO(ctx context.Context, stdin io.Reader, stdout, stderr *testutil.SyncBuffer, args ...string) result {
	a := &app{
		stdin:     stdin,
		stdout:    stdout,
		stderr:    stderr,
		lookupEnv: e.lookup,
		self:      e[testSelf],
	}
	if e[testNetns] != "" {
		a.superviseHook = inTestNetns
	}
	code := a.run(ctx, args)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// ok fails the test unless the run exited 0.
func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

// fails checks the exit code and that stderr has exactly one "smartvm: " message, which
// contains want. Progress lines may come before it, and the message may span lines.
func (r result) fails(t *testing.T, code int, want string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	n := 0
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(l, "smartvm: ") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("stderr is not one 'smartvm: <message>' line:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not mention %q:\n%s", want, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"verson"}, "did you mean version?"},
		{[]string{"version", "--nope"}, "unknown flag: --nope"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
		{[]string{"completion"}, "want one shell"},
		{[]string{"completion", "tcsh"}, `unknown shell "tcsh"`},
		{[]string{"--log-level", "loud", "version"}, `invalid --log-level "loud"`},
		{[]string{"--log-format", "xml", "version"}, `invalid --log-format "xml"`},
		{[]string{"setup", "--version", "latest"}, `invalid --version "latest"`},
		{[]string{"images", "bogus"}, `unknown command "bogus" for "smartvm images"`},
		{[]string{"bogus", "--help"}, `unknown command "bogus" for "smartvm"`},
		{[]string{"images", "bogus", "-h"}, `unknown command "bogus" for "smartvm images"`},
		{[]string{"help", "bogus"}, `unknown command "bogus" for "smartvm"`},
		{[]string{"help", "images", "bogus"}, `unknown command "bogus" for "smartvm images"`},
		{[]string{"images", "pull", "--preset", "lts", "--manifest-path", "/m"}, "use only one of"},
		{[]string{"images", "prune", "--keep", "-1"}, "invalid --keep -1"},
		{[]string{"images", "pull", "--preset", "newest"}, `invalid --preset: base image source: unknown preset "newest"`},
		{[]string{"images", "rm"}, "want at least one image name or ID, from 'smartvm images ls' (see 'smartvm images rm --help')"},
		{[]string{"run", "--cpus", "64"}, "invalid --cpus 64: want 1 to 32"},
		{[]string{"run", "--image", "hello", "--kernel", "/k"}, "--kernel cannot be combined with --image"},
		{[]string{"run", "--cpus", "x"}, `invalid argument "x" for "--cpus"`},
		{[]string{"run", "--memory", "1Q"}, `invalid argument "1Q" for "--memory" flag: "1Q": unknown unit "Q"`},
		{[]string{"run", "--memory", "2T"}, "invalid --memory 2097152: want 1 MiB to 1048576 MiB"},
		{[]string{"run", "--no-nat"}, "--no-nat needs --net"},
		{[]string{"attach"}, "want one VM name"},
		{[]string{"stop"}, "want at least one VM name"},
		{[]string{"pause"}, "want at least one VM name"},
		{[]string{"logs", "a", "b"}, "want one VM name, got 2"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			newEnv(t).run(t, tc.args...).fails(t, ExitUsage, tc.want)
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := newEnv(t).run(t).ok(t)
	for _, want := range []string{"Usage:", "SMARTVM_FIRECRACKER_BIN", "Exit codes"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help does not mention %q:\n%s", want, r.stdout)
		}
	}
	for _, args := range [][]string{{"help", "images", "pull"}, {"images", "pull", "--help"}} {
		if r := newEnv(t).run(t, args...).ok(t); !strings.Contains(r.stdout, "smartvm images pull [IMAGE | --preset") {
			t.Errorf("%s printed no help for images pull:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for shell, want := range map[string]string{
		"bash": "# bash completion V2 for smartvm",
		"zsh":  "#compdef smartvm",
		"fish": "# fish completion for smartvm",
	} {
		t.Run(shell, func(t *testing.T) {
			t.Parallel()
			r := newEnv(t).run(t, "completion", shell).ok(t)
			if !strings.Contains(r.stdout, want) {
				t.Errorf("completion %s does not contain %q:\n%.300s", shell, want, r.stdout)
			}
		})
	}
}
