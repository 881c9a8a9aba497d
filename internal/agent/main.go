package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// version is the agent's version: the module version it was built from.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// listFlag collects repeated --listen values.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// Main runs smartvm-agent with args (without the program name) and returns its exit code.
func Main(args []string) int {
	fl := flag.NewFlagSet("smartvm-agent", flag.ContinueOnError)
	var listen listFlag
	fl.Var(&listen, "listen", "where to serve, repeatable: vsock, vsock:PORT, unix:PATH or tcp:HOST:PORT (default: vsock, port 10700)")
	configPath := fl.String("config", "", "as PID 1: the init config (JSON; default: smartvm.init= from the kernel command line, else "+DefaultInitConfig+")")
	announce := fl.String("announce", "", "where to report readiness (and, as PID 1, the entrypoint's exit code) and take the clock from: vsock (the host, CID 2, port 10701), unix:PATH, tcp:HOST:PORT or none (default: vsock when listening on vsock, else none)")
	logLevel := fl.String("log-level", "info", "log level on stderr: debug, info, warn or error")
	waitMainFlag := fl.Bool("wait-main", false, "start the init config's entrypoint only when the host asks for it (a Main call, with overrides and attached stdio), then exit with its exit code (as PID 1: power off); as PID 1 the kernel argument "+agentwire.MainWaitArg+" does the same")
	showVersion := fl.Bool("version", false, "print the version and exit")
	fl.SetOutput(os.Stderr)
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	pid1 := os.Getpid() == 1
	if fl.NArg() > 0 && !pid1 {
		fmt.Fprintf(os.Stderr, "smartvm-agent: unexpected argument %q\n", fl.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Println("smartvm-agent", version())
		return 0
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "smartvm-agent: --log-level: %s\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("prog", "smartvm-agent")
	if fl.NArg() > 0 {
		// The kernel gives init the words of its command line that it does not know (and all
		// after "--"): PID 1 exiting over them would panic the guest's kernel.
		log.Warn("ignoring arguments from the kernel command line", "args", fl.Args())
	}
	if len(listen) == 0 {
		listen = listFlag{"vsock"}
	}
	if *announce == "" {
		*announce = "none"
		for _, l := range listen {
			if strings.HasPrefix(l, "vsock") {
				*announce = "vsock"
			}
		}
	}
	if *announce == "none" {
		*announce = ""
	}
	cfg := Config{Listen: listen, Announce: *announce, InitConfig: *configPath, PID1: pid1, MainWait: *waitMainFlag, Log: log}
	if err := Run(context.Background(), cfg); err != nil {
		if me, ok := errors.AsType[*MainExitError](err); ok {
			return me.Code
		}
		fmt.Fprintf(os.Stderr, "smartvm-agent: %s\n", err)
		return 1
	}
	return 0
}

// Config is how Run behaves.
type Config struct {
	// Listen holds the addresses to serve on: "vsock", "vsock:PORT", "unix:PATH",
	// "tcp:HOST:PORT". Required.
	Listen []string
	// Announce is where the agent reports readiness and, as PID 1, the entrypoint's exit code:
	// "vsock" (the host on agentwire.HostPort, whose answers set the guest's clock),
	// "unix:PATH" or "tcp:HOST:PORT" (the clock is left alone); "" reports nowhere.
	Announce string
	// PID1 makes the agent the guest's init: it sets up the system, reaps orphans, runs the
	// entrypoint of InitConfig and powers off when it ends.
	PID1 bool
	// MainWait makes the agent wait for the host's Main call (agentwire.MainStart) to start
	// the init config's entrypoint as the main process, with the host's overrides and stdio.
	// As PID 1 the kernel argument smartvm.main=wait sets it too. Not as PID 1, the init
	// config is read too, and Run returns when the main process ends.
	MainWait bool
	// Init is the init config; nil reads it from the file InitConfig names.
	Init *InitConfig
	// InitConfig is the path of the init config; "" means smartvm.init= from the kernel
	// command line, else DefaultInitConfig.
	InitConfig string
	// Log receives the agent's log; nil discards it.
	Log *slog.Logger
	// Stdout and Stderr are where the main process (MainWait) writes when no call streams
	// its output: started detached, or after its call ended. nil means the agent's own (the
	// console, as PID 1). An entrypoint run without MainWait always has the agent's own.
	Stdout, Stderr io.Writer
}

// MainExitError is Run's result when the main process (Config.MainWait, not as PID 1) ended
// with a non-zero exit code: 128+N for a signal N.
type MainExitError struct {
	Code int
}

func (e *MainExitError) Error() string {
	return fmt.Sprintf("the main process exited with code %d", e.Code)
}
