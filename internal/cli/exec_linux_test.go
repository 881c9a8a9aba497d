package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/internal/agent"
	"github.com/smartvm/smartvm/internal/fakefc"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

// startLocalAgent runs an agent in this process on a Unix socket (its "guest" is this host)
// and returns its address.
func startLocalAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, agent.Config{Listen: []string{"unix:" + sock}}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	waitAgentListens(t, sock)
	return "unix:" + sock
}

// waitAgentListens waits until an agent started in this process accepts on sock.
func waitAgentListens(t *testing.T, sock string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent does not listen")
		}
	}
}

func TestExec(t *testing.T) {
	addr := startLocalAgent(t)
	env := newEnv(t)
	env["GREETING"] = "hi"

	r := env.run(t, "exec", "--agent-addr", addr, "--", "sh", "-c", "echo out; echo err >&2")
	r.ok(t)
	if r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
	}
	r = env.run(t, "exec", "-e", "A=1", "-e", "GREETING", "-e", "UNSET_HERE", "-w", "/", "--agent-addr", addr, "sh", "-c", `echo "$A $GREETING ${UNSET_HERE-unset} $PWD"; exit 42`)
	if r.code != 42 || r.stdout != "1 hi unset /\n" || r.stderr != "" {
		t.Errorf("exit code %d, stdout %q, stderr %q; want 42, \"1 hi unset /\"", r.code, r.stdout, r.stderr)
	}
	var out, errOut testutil.SyncBuffer
	r = env.runIO(t.Context(), strings.NewReader("typed\n"), &out, &errOut, "exec", "-i", "--agent-addr", addr, "--", "cat")
	if r.code != 0 || r.stdout != "typed\n" {
		t.Errorf("exec -i cat: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	env.run(t, "exec", "--agent-addr", addr, "--", "no-such-command-anywhere").fails(t, 127, "no-such-command-anywhere: command not found")
	// The guest's reason is shown with its control characters made harmless.
	if r := env.run(t, "exec", "--agent-addr", addr, "--", "\x1b]0;title\x07x"); r.code != 127 || strings.ContainsAny(r.stderr, "\x1b\x07") || !strings.Contains(r.stderr, `\x1b]0;title\x07x: command not found`) {
		t.Errorf("exec of a command named with escapes: code %d, stderr %q", r.code, r.stderr)
	}
	env.run(t, "exec", "-u", "no-such-user", "--agent-addr", addr, "--", "true").fails(t, 126, "no such user")
	env.run(t, "exec", "--agent-addr", addr).fails(t, 2, "want a command")
	env.run(t, "exec", "--agent-addr", "ftp:x", "--", "true").fails(t, 2, "want unix:PATH or tcp:HOST:PORT")
	env.run(t, "exec", "--", "true").fails(t, 2, "--agent-addr")
}

func TestExecNoAgent(t *testing.T) {
	env := newEnv(t)
	// A socket nobody answers on: fails within the connect timeout.
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	env.run(t, "exec", "--connect-timeout", "300ms", "--agent-addr", "unix:"+sock, "--", "true").fails(t, 1, "no agent answered in unix:"+sock+" within 300ms")
	env.run(t, "exec", "--agent-addr", "unix:"+filepath.Join(t.TempDir(), "none"), "--", "true").fails(t, 1, "reach the agent")
}

func TestCp(t *testing.T) {
	addr := startLocalAgent(t)
	env := newEnv(t)
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "tree/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "tree/sub/f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	guest := t.TempDir() // the agent's guest is this host
	env.run(t, "cp", "--agent-addr", addr, filepath.Join(src, "tree"), ":"+guest).ok(t)
	back := t.TempDir()
	env.run(t, "cp", "--agent-addr", addr, ":"+filepath.Join(guest, "tree"), filepath.Join(back, "copy")).ok(t)
	if b, err := os.ReadFile(filepath.Join(back, "copy/sub/f")); err != nil || string(b) != "data" {
		t.Errorf("copied back: %q, %v", b, err)
	}
	env.run(t, "cp", "--agent-addr", addr, filepath.Join(src, "tree"), ":"+filepath.Join(guest, "missing/dir/x")).fails(t, 1, "does not exist in the guest")
	env.run(t, "cp", "--agent-addr", addr, ":"+filepath.Join(guest, "nothing"), back).fails(t, 1, "no such file")
	// An agent's error names the guest's path as the agent wrote it: shown with its control
	// characters made harmless.
	if r := env.run(t, "cp", "--agent-addr", addr, ":"+filepath.Join(guest, "\x1b]0;title\x07"), back); r.code != 1 || strings.ContainsAny(r.stderr, "\x1b\x07") || !strings.Contains(r.stderr, `\x1b]0;title\x07`) {
		t.Errorf("cp of a guest path named with escapes: code %d, stderr %q", r.code, r.stderr)
	}
	env.run(t, "cp", "--agent-addr", addr, filepath.Join(src, "tree"), ":"+guest+"/../etc").fails(t, 1, `must not contain ".."`)
	env.run(t, "cp", "--agent-addr", addr, "a", "b").fails(t, 2, "exactly one side")
	env.run(t, "cp", "--agent-addr", addr, "./x:y", "vm:/z").fails(t, 2, "not both")
	env.run(t, "cp", "--agent-addr", addr, ":", "b").fails(t, 2, "empty")
	// Limits: past --max-files in either direction, --max-size out of the guest.
	env.run(t, "cp", "--max-files", "2", "--agent-addr", addr, ":"+filepath.Join(guest, "tree"), filepath.Join(back, "small")).fails(t, 1, "--max-files")
	env.run(t, "cp", "--max-files", "2", "--agent-addr", addr, filepath.Join(src, "tree"), ":"+filepath.Join(guest, "again")).fails(t, 1, "more than 2 files")
	env.run(t, "cp", "--max-size", "0", "--max-files", "0", "--agent-addr", addr, ":"+filepath.Join(guest, "tree"), filepath.Join(back, "nolimit")).ok(t)
	env.run(t, "cp", "--max-files", "-1", "--agent-addr", addr, ":"+guest, back).fails(t, 2, "must not be negative")
	if _, err := os.Lstat(filepath.Join(back, "small")); err == nil {
		t.Error("a copy past --max-files left its destination behind")
	}
}

// TestExecVM reaches a VM's agent by its name: the fake Firecracker relays the agent's vsock
// port to an agent on this host.
func TestExecVM(t *testing.T) {
	testutil.CheckLeaks(t)
	addr := startLocalAgent(t)
	t.Setenv(fakefc.EnvVsockForward, fmt.Sprintf("%d=%s", smartvm.AgentPort, strings.TrimPrefix(addr, "unix:")))
	env := fakeEnv(t)
	env.run(t, "run", "-d", "--rm", "--name", "withagent", "--vsock", "--image", "hello", "--boot-args", bootArgs(testguest.ModeVsockEcho)).ok(t)
	defer env.run(t, "kill", "withagent")
	env.run(t, "run", "-d", "--rm", "--name", "novsock", "--image", "hello", "--boot-args", bootArgs(testguest.ModeHalt)).ok(t)
	defer env.run(t, "kill", "novsock")

	r := env.run(t, "exec", "withagent", "--", "sh", "-c", "echo via vsock; exit 3")
	if r.code != 3 || r.stdout != "via vsock\n" {
		t.Errorf("exec NAME: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	env.run(t, "exec", "novsock", "--", "true").fails(t, ExitError, "has no vsock device")
	env.run(t, "exec", "nosuchvm", "--", "true").fails(t, ExitError, "nosuchvm")

	src := filepath.Join(t.TempDir(), "f.txt")
	if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	guest := t.TempDir()
	env.run(t, "cp", src, "withagent:"+guest).ok(t)
	back := filepath.Join(t.TempDir(), "back.txt")
	env.run(t, "cp", "withagent:"+filepath.Join(guest, "f.txt"), back).ok(t)
	if b, err := os.ReadFile(back); err != nil || string(b) != "hello" {
		t.Errorf("cp through the VM: %q, %v", b, err)
	}

	var insp struct {
		Agent *agentStatus `json:"agent"`
	}
	if err := json.Unmarshal([]byte(env.run(t, "inspect", "withagent").ok(t).stdout), &insp); err != nil || insp.Agent == nil || !insp.Agent.Up {
		t.Errorf("inspect: agent %+v, %v; want up", insp.Agent, err)
	}
	ps := env.run(t, "ps").ok(t).stdout
	if !regexp.MustCompile(`(?m)^withagent .* up `).MatchString(ps) || !regexp.MustCompile(`(?m)^novsock .* - `).MatchString(ps) {
		t.Errorf("ps does not show the agent up in withagent and - in novsock:\n%s", ps)
	}
}
