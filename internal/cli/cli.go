package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/http/httpproxy"
)

// Exit codes of the smartvm command.
const (
	// ExitOK: the command did what it was asked.
	ExitOK = 0
	// ExitError: the command failed; the reason is printed on stderr.
	ExitError = 1
	// ExitUsage: the command line was wrong (unknown command or flag, bad flag value, wrong
	// number of arguments).
	ExitUsage = 2
)

// Run runs the smartvm command line: args are the arguments without the program name. Output
// goes to stdout and stderr; the console of a foreground VM reads os.Stdin. Errors are printed
// once on stderr as "smartvm: <message>". ctx ends the command: main cancels it on SIGINT and
// SIGTERM, which stops a foreground VM gracefully. Run returns the process exit code: ExitOK,
// ExitError or ExitUsage, except for ssh, which passes on the exit code of the ssh client.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{
		stdin:     os.Stdin,
		stdout:    stdout,
		stderr:    stderr,
		lookupEnv: os.LookupEnv,
	}
	return a.run(ctx, args)
}

// app is one invocation of the command line: its stdio, its environment and the settings the
// global flags resolve to. Tests build one directly to inject the environment and the
// executable the detached supervisor is started from.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// lookupEnv reads the environment; the CLI reads it nowhere else.
	lookupEnv func(string) (string, bool)
	// self is the smartvm executable that --detach re-executes; "" means os.Executable.
	self string
	// httpClient downloads releases and base images; nil means a default client.
	httpClient *http.Client
	// now reads the clock for ages and uptimes; nil means time.Now.
	now func() time.Time
	// superviseHook, when set, adjusts the command that starts a detached supervisor before
	// it starts. Tests use it to start supervisors in network namespaces of their own.
	superviseHook func(*exec.Cmd)

	// Global flags.
	logLevel, logFormat string
	fcBinFlag           string
	runtimeDirFlag      string
	stagingDirFlag      string
	// imageKernel and rootfsHeadroom are images pull's --kernel and --rootfs-headroom; they
	// override $SMARTVM_IMAGE_KERNEL and $SMARTVM_ROOTFS_HEADROOM_MIB.
	imageKernel    string
	rootfsHeadroom int
	// imageMaxSize and imageMaxFiles are images pull's --max-size and --max-files as given
	// ("" when not); they override $SMARTVM_IMAGE_MAX_SIZE and $SMARTVM_IMAGE_MAX_FILES.
	imageMaxSize, imageMaxFiles string

	// helpErr is set instead of printing help for a command line such as "bogus --help",
	// whose command does not exist.
	helpErr error

	log *slog.Logger

	// agentBin is agentBinary's answer, found once (clone spawns supervisors concurrently).
	agentBin struct {
		once sync.Once
		path string
		err  error
	}
}

// usageError marks a wrong command line; Run exits with ExitUsage for it.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// exitError ends the command with a given exit code. The message, when not empty, is printed
// like any other error.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func (a *app) run(ctx context.Context, args []string) int {
	if args == nil {
		args = []string{} // cobra reads os.Args when the slice is nil
	}
	a.log = slog.New(slog.DiscardHandler)
	root := a.newRootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		err = a.helpErr
	}
	if err == nil {
		return ExitOK
	}
	// Messages can carry what a guest, an image or a state file said (an agent's error, a
	// file name): no control characters reach the terminal.
	stderr := &terminalSafe{w: a.stderr}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(stderr, "smartvm: %s\n", ee.msg)
		}
		return ee.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		path := "smartvm"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "smartvm: %s (see '%s --help')\n", err, path)
		return ExitUsage
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintf(stderr, "smartvm: interrupted: %s\n", err)
		return ExitError
	}
	fmt.Fprintf(stderr, "smartvm: %s\n", err)
	return ExitError
}

func (a *app) newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "smartvm",
		Short: "Run Firecracker microVMs",
		Long: `smartvm runs Firecracker microVMs.

Quick start:
  smartvm run --image hello    boot the built-in test guest (no download)
  smartvm run                  boot the default Ubuntu image (installs Firecracker and
                               pulls the image on first use)
  smartvm doctor               check this host

Environment (flags win over the environment, the environment over defaults):
  SMARTVM_FIRECRACKER_BIN            firecracker binary (--firecracker-bin)
  SMARTVM_RUNTIME_DIR                runtime directory (--runtime-dir)
  SMARTVM_STAGING_DIR                where writable drive copies go (--staging-dir)
  SMARTVM_BASE_IMAGE_DIR             base image cache (default: /tmp/.smartvm/base-images
                                     for root, ~/.cache/smartvm/base-images for others)
  SMARTVM_CI_BUCKET_URL              Firecracker CI bucket the presets list
  SMARTVM_BASE_IMAGE_PRESET          default preset: latest or lts
  SMARTVM_BASE_IMAGE_MANIFEST_URL    default base image manifest URL
  SMARTVM_BASE_IMAGE_MANIFEST_PATH   default base image manifest file
  SMARTVM_FIRECRACKER_RELEASE_URL    Firecracker release site that setup downloads from
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY  proxies for every download (releases, base images)

Exit codes: 0 ok, 1 error, 2 usage (ssh passes on the exit code of ssh).`,
		SilenceUsage:               true,
		SilenceErrors:              true,
		SuggestionsMinimumDistance: 2,
		CompletionOptions:          cobra.CompletionOptions{DisableDefaultCmd: true},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.setupLogging()
		},
	}
	// --version prints what the first line of 'smartvm version' does, without looking for
	// Firecracker.
	root.Version = versionLine()
	root.SetVersionTemplate("{{.Version}}\n")
	root.Flags().Bool("version", false, "print smartvm's version and exit")
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{err}
	})
	root.SetHelpCommand(newHelpCmd())
	showHelp := root.HelpFunc()
	root.SetHelpFunc(func(cmd *cobra.Command, args []string) {
		// --help after a word that names no subcommand: cobra would show the parent's help.
		if words := cmd.Flags().Args(); cmd.HasAvailableSubCommands() && len(words) > 0 {
			a.helpErr = unknownCommand(cmd, words[0])
			return
		}
		showHelp(cmd, args)
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.logLevel, "log-level", "warn", "smartvm's own log level: debug, info, warn or error")
	pf.StringVar(&a.logFormat, "log-format", "text", "smartvm's own log format on stderr: text or json")
	pf.StringVar(&a.fcBinFlag, "firecracker-bin", "", "firecracker binary (default: $SMARTVM_FIRECRACKER_BIN, ~/.smartvm/bin/firecracker, then PATH)")
	pf.StringVar(&a.stagingDirFlag, "staging-dir", "", "where VMs' writable drive copies go (default: $SMARTVM_STAGING_DIR, else each VM's runtime directory); put it on a filesystem with reflinks (btrfs, XFS) to make copies free")
	pf.StringVar(&a.runtimeDirFlag, "runtime-dir", "", "runtime directory for VM sockets, logs and state (default: $SMARTVM_RUNTIME_DIR, else /dev/shm/.smartvm/runtime for root and /dev/shm/.smartvm-UID/runtime for other users, on tmpfs; else the same under $TMPDIR)")

	_ = root.RegisterFlagCompletionFunc("log-level", fixedValues("debug", "info", "warn", "error"))
	_ = root.RegisterFlagCompletionFunc("log-format", fixedValues("text", "json"))
	root.AddCommand(
		a.newVersionCmd(),
		a.newCompletionCmd(),
		a.newSetupCmd(),
		a.newDoctorCmd(),
		a.newRunCmd(),
		a.newImagesCmd(),
		a.newPsCmd(),
		a.newInspectCmd(),
		a.newLogsCmd(),
		a.newAttachCmd(),
		a.newSSHCmd(),
		a.newExecCmd(),
		a.newCpCmd(),
		a.newPauseCmd(),
		a.newResumeCmd(),
		a.newUpdateCmd(),
		a.newStopCmd(),
		a.newKillCmd(),
		a.newRmCmd(),
		a.newPruneCmd(),
		a.newSnapshotCmd(),
		a.newRestoreCmd(),
		a.newCloneCmd(),
		a.newSuperviseCmd(),
	)
	return root
}

// unknownCommand is the usage error for a word that names no subcommand of cmd.
func unknownCommand(cmd *cobra.Command, word string) error {
	msg := fmt.Sprintf("unknown command %q for %q", word, cmd.CommandPath())
	if s := cmd.SuggestionsFor(word); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %s?", strings.Join(s, " or "))
	}
	return &usageError{errors.New(msg)}
}

// newHelpCmd is "smartvm help [command]", which, unlike cobra's, fails with a usage error
// for a command that does not exist.
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		ValidArgsFunction: func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
			target, _, err := cmd.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []string
			for _, sub := range target.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), prefix) {
					names = append(names, sub.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			target, words, err := cmd.Root().Find(args)
			if err != nil {
				return &usageError{err}
			}
			if len(words) > 0 {
				return unknownCommand(target, words[0])
			}
			return target.Help()
		},
	}
}

// groupCmd is a command that only holds subcommands: without arguments it prints its help,
// with an unknown one it is a usage error.
func groupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(subs...)
	return c
}

// exactArgs is cobra.ExactArgs as a usage error that names what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs as a usage error that names what is expected.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("want %s", what)
		}
		return nil
	}
}

// maxArgs is cobra.MaximumNArgs as a usage error that names what is expected.
func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("want at most %s, got %d arguments", what, len(args))
		}
		return nil
	}
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// getenv returns the environment variable's value, "" when unset.
func (a *app) getenv(key string) string {
	v, _ := a.lookupEnv(key)
	return v
}

func (a *app) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

// joinErrors combines the failures of a command that works on several names into one error
// whose message is one line.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return &multiError{errs}
}

type multiError struct{ errs []error }

func (e *multiError) Error() string {
	msgs := make([]string, len(e.errs))
	for i, err := range e.errs {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e *multiError) Unwrap() []error { return e.errs }

// client is the HTTP client for every download of the CLI (releases and base images): the
// injected one, else one that uses the proxies the CLI's environment names.
func (a *app) client() *http.Client {
	if a.httpClient != nil {
		return a.httpClient
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	proxy := a.proxyConfig().ProxyFunc()
	t.Proxy = func(r *http.Request) (*url.URL, error) { return proxy(r.URL) }
	a.httpClient = &http.Client{Transport: t}
	return a.httpClient
}

// proxyConfig reads HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lower-case forms, which
// win, as curl's and Go's own reading do) from the CLI's environment.
func (a *app) proxyConfig() *httpproxy.Config {
	get := func(name string) string {
		if v, ok := a.lookupEnv(strings.ToLower(name)); ok && v != "" {
			return v
		}
		return a.getenv(name)
	}
	return &httpproxy.Config{HTTPSProxy: get("HTTPS_PROXY"), HTTPProxy: get("HTTP_PROXY"), NoProxy: get("NO_PROXY")}
}

// lookPath finds an executable called name in the directories of $PATH (as the CLI reads
// the environment), skipping relative entries.
func (a *app) lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(a.getenv("PATH")) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue // a relative PATH entry would depend on the working directory
		}
		p := filepath.Join(dir, name)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}
