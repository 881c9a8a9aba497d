package fakefc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment variables read by Main (and only there).
const (
	EnvVersion     = "SMARTVM_FAKEFC_VERSION"      // the release to mimic, like "1.14.2"
	EnvMode        = "SMARTVM_FAKEFC_MODE"         // comma-separated failure modes
	EnvSocketDelay = "SMARTVM_FAKEFC_SOCKET_DELAY" // a Go duration between bind and listen
	// EnvVsockForward is Options.VsockForward: comma-separated PORT=PATH pairs.
	EnvVsockForward = "SMARTVM_FAKEFC_VSOCK_FORWARD"
)

// exitUsage is what Main returns when the fake itself is misconfigured through its
// environment; Firecracker never uses it for its own errors.
const exitUsage = 2

// Main runs the fake as the firecracker executable: args are the command-line arguments
// without the program name; the result is the exit status. It writes to the process's
// standard output and error, reads the environment (EnvVersion, EnvMode, EnvSocketDelay,
// EnvVsockForward) and
// may end the process by a signal: SIGABRT where Firecracker panics (an invalid --id, an
// unreadable --config-file), and SIGTERM is left to its default action unless the
// ignore-sigterm mode is set.
func Main(argv []string) int {
	if err := enterJail(); err != nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %v\n", err)
		return exitUsage
	}
	p := &process{stdout: os.Stdout, stderr: os.Stderr}
	return p.main(argv)
}

type process struct {
	stdout, stderr io.Writer
	rel            *release
	log            *fcLogger
	opts           Options
}

// fail logs Firecracker's final error line, writes its "Error: ..." line on stderr and
// returns code.
func (p *process) fail(code int, logLine, stderrLine string) int {
	if logLine != "" {
		p.log.err(threadMain, "%s", logLine)
	}
	p.log.err(threadMain, "Firecracker exiting with error. exit_code=%d", code)
	fmt.Fprintf(p.stderr, "Error: %s\n", stderrLine)
	return code
}

func (p *process) success() int {
	p.log.info(threadMain, "Firecracker exiting successfully. exit_code=0")
	return 0
}

// panicAbort mimics a Rust panic: the message goes to the log, then the process aborts.
func (p *process) panicAbort(location, msg string) int {
	p.log.err(threadMain, "Firecracker panicked at %s:\n%s", location, msg)
	abort()
	return 134
}

// panicLocation returns where a release's main.rs panics for a given check, so messages
// match v1.14.x and v1.7.x exactly; other releases use v1.14's.
func (p *process) panicLocation(what string) string {
	locs := map[string][2]string{
		"id":       {"src/firecracker/src/main.rs:296:48", "src/firecracker/src/main.rs:285:48"},
		"config":   {"src/firecracker/src/main.rs:369:20", "src/firecracker/src/main.rs:358:20"},
		"metadata": {"src/firecracker/src/main.rs:374:20", "src/firecracker/src/main.rs:363:20"},
		"payload":  {"src/firecracker/src/main.rs:384:18", "src/firecracker/src/main.rs:373:18"},
		"mmds":     {"src/firecracker/src/main.rs:396:18", "src/firecracker/src/main.rs:385:18"},
		"time":     {"src/firecracker/src/main.rs:408:18", "src/firecracker/src/main.rs:397:18"},
		"json":     {"src/vmm/src/rpc_interface.rs:385:44", "src/vmm/src/rpc_interface.rs:346:44"},
	}
	l := locs[what]
	if p.rel.minor == 7 {
		return l[1]
	}
	return l[0]
}

func (p *process) main(argv []string) int {
	rel, err := loadRelease(os.Getenv(EnvVersion))
	if err != nil {
		fmt.Fprintf(p.stderr, "fake firecracker: %v (set %s to a supported release)\n", err, EnvVersion)
		return exitUsage
	}
	p.rel = rel
	p.opts = Options{Version: rel.version, Stdout: p.stdout}
	if m := os.Getenv(EnvMode); m != "" {
		for _, s := range strings.Split(m, ",") {
			if s = strings.TrimSpace(s); s != "" {
				p.opts.Modes = append(p.opts.Modes, s)
			}
		}
	}
	if f := os.Getenv(EnvVsockForward); f != "" {
		if p.opts.VsockForward, err = ParseVsockForward(f); err != nil {
			fmt.Fprintf(p.stderr, "fake firecracker: %s: %v\n", EnvVsockForward, err)
			return exitUsage
		}
	}
	if d := os.Getenv(EnvSocketDelay); d != "" {
		if p.opts.SocketDelay, err = time.ParseDuration(d); err != nil {
			fmt.Fprintf(p.stderr, "fake firecracker: %s=%q is not a duration such as 100ms: %v\n", EnvSocketDelay, d, err)
			return exitUsage
		}
	}
	p.log = newLogger(p.stdout, "anonymous-instance")
	// Arguments after "--" are extra arguments Firecracker ignores; --help, then --version,
	// anywhere before them skip the parsing of the others.
	if i := slices.Index(argv, "--"); i >= 0 {
		argv = argv[:i]
	}
	switch {
	case slices.Contains(argv, "--help"):
		_, _ = io.WriteString(p.stdout, helpText(rel))
		return p.success()
	case slices.Contains(argv, "--version"):
		fmt.Fprintf(p.stdout, "Firecracker v%s\n\n", rel.version)
		return p.success()
	}
	a, aerr := parseArgs(rel, argv)
	if aerr != nil {
		return p.fail(153, "Arguments parsing error: "+aerr.msg+` \n\nFor more information try --help.`, "ParseArguments("+aerr.debug+")")
	}
	switch {
	case a.has("snapshot-version"):
		fmt.Fprintf(p.stdout, "v%s\n", rel.snapshotFormat())
		return p.success()
	case a.has("describe-snapshot"):
		v, err := describeSnapshot(a.get("describe-snapshot"), rel.legacyErrors())
		if err != nil {
			return p.fail(1, "When printing Snapshot Data format: "+err.Error(), "PrintSnapshotDataFormat("+err.Error()+")")
		}
		fmt.Fprintln(p.stdout, v)
		return p.success()
	}
	if msg := checkInstanceID(a.get("id")); msg != "" {
		return p.panicAbort(p.panicLocation("id"), "Invalid instance ID: "+msg)
	}
	p.opts.ID = a.get("id")
	p.log.id = p.opts.ID
	if code := p.initLogger(a); code != 0 {
		return code
	}
	p.log.info(threadMain, "Running Firecracker v%s", rel.version)
	return p.run(a)
}

// initLogger applies --level, --log-path and the other logger flags.
func (p *process) initLogger(a args) int {
	var c loggerConfig
	if a.has("level") {
		lvl := a.get("level")
		if _, ok := logLevels[strings.ToLower(lvl)]; !ok {
			return p.fail(152, "Invalid value for logger level: Failed to parse string to level filter: "+lvl+
				".Possible values: [Error, Warning, Info, Debug]", "InvalidLogLevel(LevelFilterFromStrError("+rustDebugString(lvl)+"))")
		}
		c.Level = &lvl
	}
	if a.has("log-path") {
		lp := a.get("log-path")
		c.LogPath = &lp
	}
	if a.has("show-level") {
		t := true
		c.ShowLevel = &t
	}
	if a.has("show-log-origin") {
		t := true
		c.ShowLogOrigin = &t
	}
	if a.has("module") {
		m := a.get("module")
		c.Module = &m
	}
	if err := p.log.configure(c, p.rel.atLeast(14)); err != nil {
		return p.fail(1, "Could not initialize logger: Failed to open target file: "+osError(err),
			"LoggerInitialization(LoggerUpdateError("+osErrorDebug(err)+"))")
	}
	return 0
}

func (p *process) run(a args) int {
	if p.opts.has(ModeExitEarly) {
		return p.fail(1, "RunWithApiError error: Failed to bind and run the HTTP server: IO error: Permission denied (os error 13)",
			`RunWithApi(FailedToBindAndRunHttpServer(IOError(Os { code: 13, kind: PermissionDenied, message: "Permission denied" })))`)
	}
	p.opts.EnablePCI, p.opts.BootTimer = a.has("enable-pci"), a.has("boot-timer")
	h, err := newHandler(p.opts, p.log)
	if err != nil {
		fmt.Fprintf(p.stderr, "fake firecracker: %v (check %s)\n", err, EnvMode)
		return exitUsage
	}
	if a.has("metrics-path") {
		if err := h.vm.metrics.open(a.get("metrics-path"), p.rel.atLeast(14)); err != nil {
			msg := "Cannot initialize the metrics system due to bad user input: " + osError(err)
			if p.rel.legacyErrors() {
				msg = "InitializationFailure(" + rustDebugString(osError(err)) + ")"
			}
			return p.fail(1, "Could not initialize metrics: "+msg, "MetricsInitialization(InitializationFailure("+rustDebugString(osError(err))+"))")
		}
	}
	if a.has("seccomp-filter") {
		// The fake installs no filter, but the file must be readable, as Firecracker's must.
		if _, err := os.ReadFile(a.get("seccomp-filter")); err != nil {
			return p.fail(1, "Seccomp error: Filter file open error: "+osError(err), "SeccompFilter(FileOpen("+osErrorDebug(err)+"))")
		}
	}
	if p.opts.has(ModeIgnoreSigterm) {
		signal.Ignore(syscall.SIGTERM)
	}
	var config []byte
	if a.has("config-file") {
		if config, err = os.ReadFile(a.get("config-file")); err != nil {
			return p.panicAbort(p.panicLocation("config"), "Unable to open or read from the configuration file: "+osErrorDebug(err))
		}
	}
	for _, n := range []struct{ arg, what, typ string }{
		{"http-api-max-payload-size", "payload", "usize"}, {"mmds-size-limit", "mmds", "usize"},
		{"start-time-us", "time", "u64"}, {"start-time-cpu-us", "time", "u64"}, {"parent-cpu-time-us", "time", "u64"},
	} {
		if !a.has(n.arg) {
			continue
		}
		v, err := strconv.ParseUint(a.get(n.arg), 10, 64)
		if err != nil {
			kind := "InvalidDigit"
			switch {
			case a.get(n.arg) == "":
				kind = "Empty"
			case errors.Is(err, strconv.ErrRange):
				kind = "PosOverflow"
			}
			return p.panicAbort(p.panicLocation(n.what), fmt.Sprintf("'%s' parameter expected to be of '%s' type.: ParseIntError { kind: %s }", n.arg, n.typ, kind))
		}
		switch n.arg {
		case "http-api-max-payload-size":
			h.maxPayload = int(min(v, 1<<31))
			if !a.has("mmds-size-limit") {
				h.vm.mmdsLimit = h.maxPayload
			}
		case "mmds-size-limit":
			h.vm.mmdsLimit = int(min(v, 1<<31))
		}
	}
	var metadata []byte
	if a.has("metadata") {
		if metadata, err = os.ReadFile(a.get("metadata")); err != nil {
			return p.panicAbort(p.panicLocation("metadata"), "Unable to open or read from the mmds content file: "+osErrorDebug(err))
		}
	}
	if p.opts.has(ModeNoSocket) {
		// Run, but never create the API socket: only a signal ends this.
		for {
			time.Sleep(time.Hour)
		}
	}
	noAPI := a.has("no-api")
	runErr := "RunWithApiError"
	if noAPI {
		runErr = "RunWithoutApiError"
	} else {
		sock := a.get("api-sock")
		if _, err := serve(sock, h); err != nil {
			if errors.Is(err, ErrSocketInUse) {
				return p.fail(1, "RunWithApiError error: Failed to open the API socket at: "+sock+". Check that it is not already used.",
					"RunWithApi(FailedToBindSocket("+rustDebugString(sock)+"))")
			}
			return p.fail(1, "RunWithApiError error: Failed to bind and run the HTTP server: IO error: "+osError(err),
				"RunWithApi(FailedToBindAndRunHttpServer(IOError("+osErrorDebug(err)+")))")
		}
	}
	if metadata != nil {
		var data any
		if derr := json.Unmarshal(metadata, &data); derr != nil {
			_, serr := decode(metadata, anyType)
			msg := derr.Error()
			if serr != nil {
				msg = fmt.Sprintf("Error(%s, line: %d, column: %d)", rustDebugString(serr.msg), serr.line, serr.col)
			}
			return p.panicAbort(p.panicLocation("json"), "MMDS error: metadata provided not valid json: "+msg)
		}
		h.vm.mmdsData = data
	}
	if config != nil {
		if msg := h.bootFromConfig(config); msg != "" {
			return p.fail(1, runErr+" error: Failed to build MicroVM from Json: "+msg, runErr+"(BuildFromJson("+rustDebugString(msg)+"))")
		}
	}
	<-h.Done()
	code := h.ExitCode()
	if code == exitAborted {
		abort()
	}
	if code == 1 {
		fmt.Fprintln(p.stderr, "Error: RunWithApi(BuildMicroVmError(Restore))")
	}
	return code
}
