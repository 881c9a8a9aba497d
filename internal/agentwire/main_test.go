package agentwire

import (
	"strings"
	"testing"
)

// TestExecStartCheck: an Exec request is bounded as a Main request is, and names a command.
func TestExecStartCheck(t *testing.T) {
	many := make([]string, MaxMainArgs+1)
	for i := range many {
		many[i] = "K=V"
	}
	for _, tc := range []struct {
		name string
		req  ExecStart
		want string
	}{
		{"no command", ExecStart{}, "no command"},
		{"empty command", ExecStart{Args: []string{""}}, "no command"},
		{"env without =", ExecStart{Args: []string{"x"}, Env: []string{"JUSTKEY"}}, "want KEY=VALUE"},
		{"too many args", ExecStart{Args: many}, "at most 4096"},
		{"too many env", ExecStart{Args: []string{"x"}, Env: many}, "at most 4096"},
		{"long arg", ExecStart{Args: []string{"x", strings.Repeat("x", MaxMainString+1)}}, "bytes long"},
		{"NUL", ExecStart{Args: []string{"x"}, User: "a\x00"}, "NUL"},
	} {
		if err := tc.req.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Check: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	ok := ExecStart{Args: []string{"sh", "-c", "true"}, Env: []string{"A=", "B=c=d"}, Dir: "/", User: "1:1"}
	if err := ok.Check(); err != nil {
		t.Errorf("Check of a good request: %v", err)
	}
}
