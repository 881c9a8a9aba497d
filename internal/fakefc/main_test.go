package fakefc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// The executable's failure modes and environment, which only the fake has.

func fakeRun(t *testing.T, env ...string) *run {
	t.Helper()
	tg := fakeTarget(t, DefaultVersion)
	tg.env = append(tg.env, env...)
	return newRun(t, tg)
}

func TestMainExitEarly(t *testing.T) {
	t.Parallel()
	r := fakeRun(t, EnvMode+"="+ModeExitEarly)
	p := r.spawn("fc", true)
	p.wait("exit 1")
	if _, err := os.Stat(p.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("exit-early created the socket: %v", err)
	}
	r.hasLog("stdout", p.stdout.String(), "[test:main] Firecracker exiting with error. exit_code=1")
}

func TestMainNoSocket(t *testing.T) {
	t.Parallel()
	r := fakeRun(t, EnvMode+"="+ModeNoSocket)
	p := r.spawn("fc", true)
	p.alive(200 * time.Millisecond)
	if _, err := os.Stat(p.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no-socket created the socket: %v", err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait("signal terminated")
}

func TestMainSocketDelay(t *testing.T) {
	t.Parallel()
	for _, env := range []string{EnvMode + "=" + ModeSlowSocket, EnvSocketDelay + "=400ms"} {
		r := fakeRun(t, env)
		p := r.spawn("fc", true)
		start := time.Now()
		waitFor(t, "the socket file", func() bool { _, err := os.Stat(p.sock); return err == nil })
		refused := false
		for time.Since(start) < 5*time.Second {
			c, err := net.Dial("unix", p.sock)
			if err == nil {
				c.Close()
				break
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				refused = true
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !refused || time.Since(start) < 300*time.Millisecond {
			t.Errorf("%s: the socket accepted after %v (refused before: %v)", env, time.Since(start), refused)
		}
		p.state("Not started")
	}
}

func TestMainIgnoreSigterm(t *testing.T) {
	t.Parallel()
	r := fakeRun(t, EnvMode+"="+ModeIgnoreSigterm+","+ModeIgnoreCtrlAltDel)
	p := r.start("fc")
	p.boot(testguest.ModeCAD)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.alive(200 * time.Millisecond)
	p.state("Running")
	_ = p.cmd.Process.Kill()
	p.wait("signal killed")
}

func TestMainBadEnvironment(t *testing.T) {
	t.Parallel()
	for _, env := range []string{EnvVersion + "=2.0.0", EnvMode + "=explode", EnvSocketDelay + "=soon"} {
		r := fakeRun(t, env)
		p := r.spawn("fc", true)
		p.wait("exit 2")
		if !strings.Contains(p.stderr.String(), "fake firecracker:") {
			t.Errorf("%s: stderr %q", env, p.stderr.String())
		}
	}
}

func TestMainMetadataAndConfig(t *testing.T) {
	t.Parallel()
	r := fakeRun(t)
	write := func(name, body string) string {
		if err := os.WriteFile(r.path(name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return r.path(name)
	}
	cfg := write("vm.json", fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q,"boot_args":%q},"drives":[],`+
		`"machine-config":{"vcpu_count":2,"mem_size_mib":64},"logger":{"log_path":%q,"level":"Info"}}`,
		r.kernel, testguest.BootArgs(testguest.ModeCAD), r.path("fc.log")))
	p := r.spawn("fc", true, "--config-file", cfg, "--metadata", write("md.json", `{"k":"v"}`))
	p.waitSerial(testguest.ReadyLine)
	p.expect("GET", "/mmds", "", 200, `{"k":"v"}`)
	p.expect("GET", "/machine-config", "", 200, `{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	p.wait("exit 0")
	logText, _ := os.ReadFile(r.path("fc.log"))
	r.hasLog("log", string(logText), "[test:main] Successfully started microvm that was configured from one single json")

	bad := r.spawn("badmd", true, "--metadata", write("bad.json", `{"k":`))
	bad.wait("signal aborted")
	if !strings.Contains(bad.stdout.String(), "MMDS error: metadata provided not valid json: Error(\"EOF while parsing a value\"") {
		t.Errorf("stdout %q", bad.stdout.String())
	}
}

func TestParseArgs(t *testing.T) {
	rel14, err := loadRelease("1.14.2")
	if err != nil {
		t.Fatal(err)
	}
	rel7, err := loadRelease("1.7.0")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rel  *release
		args []string
		err  string
	}{
		{rel14, []string{"--api-sock", "/s", "--id", "a-1", "--boot-timer", "--enable-pci"}, ""},
		{rel7, []string{"--enable-pci"}, `UnexpectedArgument("enable-pci")`},
		{rel14, []string{"--api-sock", "--id", "x"}, `MissingValue("api-sock")`},
		{rel14, []string{"--show-level", "--show-level"}, `DuplicateArgument("show-level")`},
		{rel14, []string{"api-sock"}, `UnexpectedArgument("api-sock")`},
		{rel14, []string{"--no-api"}, `MissingArgument("config-file")`},
		{rel14, []string{"--no-api", "--config-file", "c"}, ""},
	} {
		a, aerr := parseArgs(tc.rel, tc.args)
		switch {
		case tc.err == "" && aerr != nil:
			t.Errorf("%q: %v", tc.args, aerr)
		case tc.err != "" && (aerr == nil || aerr.debug != tc.err):
			t.Errorf("%q: %v, want %s", tc.args, aerr, tc.err)
		}
		if tc.err == "" && a.get("id") == "" {
			t.Errorf("%q: no default id", tc.args)
		}
	}
	for id, want := range map[string]string{"a-1": "", "": "InvalidLen(0, 1, 64)", "a_b": "InvalidChar('_', 1)", strings.Repeat("a", 65): "InvalidLen(65, 1, 64)"} {
		if got := checkInstanceID(id); got != want {
			t.Errorf("checkInstanceID(%q) = %q, want %q", id, got, want)
		}
	}
	if !strings.Contains(helpText(rel14), "--enable-pci ") || strings.Contains(helpText(rel7), "--enable-pci") {
		t.Error("--enable-pci belongs to the help text from v1.13")
	}
}
