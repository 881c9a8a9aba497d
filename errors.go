package smartvm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/smartvm/smartvm/internal/rundir"

	"github.com/smartvm/smartvm/fcapi"
)

// Sentinel errors. Check them with errors.Is; each function's documentation lists the ones it
// may return.
var (
	// ErrExists reports a VM name already used in the runtime root: by a live VM, one being
	// started, or the record of one that exited (then the error wraps ErrExited too).
	ErrExists = rundir.ErrExists
	// ErrExited reports a VM that has ended and is kept as exited (KeepExited) until
	// Manager.Remove: it cannot be attached, and its name is taken.
	ErrExited = rundir.ErrExited
	// ErrNotFound reports that no live VM has the name, or (from OpenSnapshot) that a
	// directory holds no snapshot.
	ErrNotFound = rundir.ErrNotFound
	// ErrNotRunning reports a call that needs a running VM made after its process ended.
	ErrNotRunning = errors.New("vm not running")
	// ErrClosed reports a Start, Restore or Attach on a Manager after its Close.
	ErrClosed = errors.New("closed")
	// ErrNoConsoleInput reports Machine.ConsoleInput on a VM started without
	// MachineSpec.SerialInput.
	ErrNoConsoleInput = errors.New("vm has no console input (start it with serial_input)")
	// ErrDriveInUse reports a drive used in place (persistent, or read-only) that another VM
	// holds: one writes it, or it is to be written while others read it.
	ErrDriveInUse = errors.New("drive in use")
	// ErrCorruptState reports a VM whose state.json cannot be read: nothing it records is
	// trusted, and Manager.Remove with force removes the VM.
	ErrCorruptState = rundir.ErrCorruptState
	// ErrNoVsock reports Machine.DialVsock or Machine.ListenVsock on a VM started without a
	// vsock device (MachineSpec.Vsock).
	ErrNoVsock = errors.New("vm has no vsock device (start it with a vsock)")
	// ErrNoVsockListener reports a Machine.DialVsock that Firecracker turned down until its
	// ctx ended: nothing in the guest listened on the port.
	ErrNoVsockListener = errors.New("nobody listened on the vsock port in the guest")
	// ErrOtherRuntimeRoot reports a Restore in a runtime root other than the one the
	// snapshot was taken in, when the snapshot's drives were staged there. It wraps
	// errors.ErrUnsupported.
	ErrOtherRuntimeRoot = fmt.Errorf("restore in the runtime root the snapshot was taken in: %w", errors.ErrUnsupported)
	// ErrPaused reports a call that needs a running guest made while the VM is paused, such
	// as Machine.DialVsock: resume the VM first.
	ErrPaused = errors.New("vm is paused (resume it first)")
)

// ExitError reports how a firecracker process ended when it did not exit with code 0: from
// Machine.Wait, and wrapped in a failed Start's error when the process died during start-up.
type ExitError struct {
	// Code is the exit code, or -1 when the process was killed by a signal.
	Code int
	// Signal names the signal that killed the process, such as "SIGKILL"; empty otherwise.
	Signal string
	// LogTail holds the last lines of firecracker's log and stderr, when they said anything.
	LogTail string
}

// exitCodeMeanings are Firecracker's documented exit codes (FcExitCode).
var exitCodeMeanings = map[int]string{
	1:   "generic error",
	2:   "unexpected error",
	148: "bad syscall (seccomp)",
	149: "SIGBUS",
	150: "SIGSEGV",
	151: "SIGXFSZ",
	152: "bad configuration",
	153: "argument parsing error",
	154: "SIGXCPU",
	156: "SIGHUP",
	157: "SIGILL",
}

func (e *ExitError) Error() string {
	var b strings.Builder
	if e.Signal != "" {
		fmt.Fprintf(&b, "firecracker killed by signal %s", e.Signal)
	} else {
		fmt.Fprintf(&b, "firecracker exited with code %d", e.Code)
		if m, ok := exitCodeMeanings[e.Code]; ok {
			fmt.Fprintf(&b, " (%s)", m)
		}
	}
	if line := lastLine(e.LogTail); line != "" {
		fmt.Fprintf(&b, ": %s", line)
	}
	return b.String()
}

// lastLine returns the last non-blank line of s.
func lastLine(s string) string {
	s = strings.TrimRight(s, " \t\r\n")
	return strings.TrimSpace(s[strings.LastIndexByte(s, '\n')+1:])
}

// StartError is a Start that failed after its checks passed. Everything Start had set up has
// been removed by the time it is returned.
type StartError struct {
	// Name is the VM's name.
	Name string
	// Step is what failed, such as "wait for the API socket" or "PUT /drives/rootfs".
	Step string
	// Err is the failure.
	Err error
	// Exit is how firecracker ended when it died during start-up; nil when it was still
	// running (it was then killed) or never started.
	Exit *ExitError
	// LogTail holds the last lines of firecracker's log and stderr.
	LogTail string
}

func (e *StartError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "start vm %s: %s: %s", e.Name, e.Step, e.Err.Error())
	if e.Exit != nil && !errors.Is(e.Err, e.Exit) {
		fmt.Fprintf(&b, "; %s", (&ExitError{Code: e.Exit.Code, Signal: e.Exit.Signal}).Error())
	}
	if h := startHint(e.Err); h != "" {
		fmt.Fprintf(&b, "\nhint: %s", h)
	}
	if tail := strings.TrimSpace(e.LogTail); tail != "" {
		fmt.Fprintf(&b, "\nfirecracker output:\n%s", indent(tail))
	}
	return b.String()
}

// Unwrap returns Err and, when firecracker died, Exit, so errors.As finds an *ExitError.
func (e *StartError) Unwrap() []error {
	if e.Exit != nil {
		return []error{e.Err, e.Exit}
	}
	return []error{e.Err}
}

// startHints say what to do about Firecracker refusals that people commonly meet at start
// (firecracker-notes §13), keyed by a piece of Firecracker's own message.
var startHints = []struct{ match, hint string }{
	{"Kernel Loader", "the kernel must be an uncompressed ELF vmlinux built for this architecture " +
		"(on x86_64 a bzImage or a compressed kernel is refused before Firecracker 1.17; on aarch64 use a PE Image)"},
	{"Resource busy", "a TAP device can be held by one Firecracker at a time: stop the process that holds it " +
		"(a previous VM?), or use another device"},
	{"Open tap device failed", "create the TAP device first (ip tuntap add dev NAME mode tap) and bring it up, " +
		"or let smartvm build the network (MachineSpec.Network, smartvm run --net)"},
}

// startHint returns the hint for a start failure whose Firecracker message it recognises.
func startHint(err error) string {
	var ae *fcapi.APIError
	if !errors.As(err, &ae) {
		return ""
	}
	for _, h := range startHints {
		if strings.Contains(ae.FaultMessage, h.match) {
			return h.hint
		}
	}
	return ""
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
