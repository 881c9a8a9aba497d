package agent

import (
	"context"
	"testing"

	"github.com/smartvm/smartvm/internal/agentwire"
)

func TestExecBasics(t *testing.T) {
	a := startNSAgent(t, makeRootfs(t))
	for _, tc := range []struct {
		name             string
		start            agentwire.ExecStart
		stdin            string
		stdout, stderr   string
		code             int
		errorContains    string
	}{
		{name: "echo", start: agentwire.ExecStart{Args: []string{"echo", "hello", "world"}}, stdout: "hello world\n"},
		{name: "exit code", start: agentwire.ExecStart{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}}, stdout: "out\n", stderr: "err\n", code: 7},
		{name: "stdin", start: agentwire.ExecStart{Args: []string{"cat"}}, stdin: "from stdin\n", stdout: "from stdin\n"},
		{name: "env and dir", start: agentwire.ExecStart{Args: []string{"sh", "-c", "echo $FOO $PWD $HOME"}, Env: []string{"FOO=bar"}, Dir: "/data"}, stdout: "bar /data /root\n"},
		{name: "user by name", start: agentwire.ExecStart{Args: []string{"id"}, User: "tester"}, stdout: "uid=1000(tester) gid=1000(tester) groups=10(wheel),1000(tester)\n"},
		{name: "user uid:gid", start: agentwire.ExecStart{Args: []string{"id", "-u"}, User: "1234:10"}, stdout: "1234\n"},
		{name: "unknown command", start: agentwire.ExecStart{Args: []string{"no-such-command"}}, code: 127, errorContains: "no-such-command: command not found"},
		{name: "unknown user", start: agentwire.ExecStart{Args: []string{"true"}, User: "nobody-here"}, code: 126, errorContains: "no such user"},
		{name: "missing dir", start: agentwire.ExecStart{Args: []string{"true"}, Dir: "/nowhere"}, code: 126, errorContains: "working directory /nowhere"},
		{name: "killed by signal", start: agentwire.ExecStart{Args: []string{"sh", "-c", "kill -TERM $$"}}, code: 128 + 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, st := a.run(t, tc.start, tc.stdin)
			if stdout != tc.stdout || stderr != tc.stderr || st.Code != tc.code {
				t.Errorf("got stdout %q stderr %q code %d, want %q %q %d (status %+v)", stdout, stderr, st.Code, tc.stdout, tc.stderr, tc.code, st)
			}
			if tc.errorContains != "" && !contains(st.Error, tc.errorContains) {
				t.Errorf("error %q does not contain %q", st.Error, tc.errorContains)
			}
		})
	}
	_ = context.Background
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && indexOf(s, sub) >= 0)
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
