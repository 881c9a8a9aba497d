package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// mainProc is the guest's main process when the agent waits for the host to start it
// (agentwire.MainWaitArg, --wait-main): the first Main call starts it, with the host's
// overrides of the init config. Its end is the agent's (as PID 1, the machine powers off).
type mainProc struct {
	init *InitConfig

	mu       sync.Mutex
	claimed  bool // a Main call took it (or a stop came first)
	stopping bool // a stop came before its pid was known
	pid      int
	code     int
	done     chan struct{} // closed once it has ended or failed to start; code is then set
	doneOnce sync.Once
	// callDone is closed when the call that started it is over, its exit status sent.
	callDone chan struct{}
	callOnce sync.Once
	// drained is closed once its output has been read to the end (or it never started).
	drained     chan struct{}
	drainedOnce sync.Once
}

func newMainProc(init *InitConfig) *mainProc {
	return &mainProc{init: init, done: make(chan struct{}), callDone: make(chan struct{}), drained: make(chan struct{})}
}

// claim takes the main process for a call; false when it is taken.
func (m *mainProc) claim() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.claimed {
		return false
	}
	m.claimed = true
	return true
}

func (m *mainProc) outputDrained() { m.drainedOnce.Do(func() { close(m.drained) }) }

func (m *mainProc) finish(code int) {
	m.doneOnce.Do(func() {
		m.mu.Lock()
		m.code = code
		m.mu.Unlock()
		close(m.done)
	})
}

// failed records a main process that could not start.
func (m *mainProc) failed(code int) {
	m.finish(code)
	m.outputDrained()
}

func (m *mainProc) endCall() { m.callOnce.Do(func() { close(m.callDone) }) }

// started records the running main process and returns the channel its wait status comes on
// for the call; the process's end is recorded whether the call is still there or not.
func (m *mainProc) started(pid int, wait <-chan syscall.WaitStatus) <-chan syscall.WaitStatus {
	m.mu.Lock()
	m.pid = pid
	stop := m.stopping
	m.mu.Unlock()
	if stop {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
	}
	ch := make(chan syscall.WaitStatus, 1)
	go func() {
		ws := <-wait
		st := exitStatus(ws)
		m.finish(st.Code)
		ch <- ws
	}()
	return ch
}

// stop asks the main process to end with SIGTERM to its process group. It reports false when
// no call has taken it: then none can any more, and it counts as ended with code.
func (m *mainProc) stop(code int) bool {
	m.mu.Lock()
	if !m.claimed {
		m.claimed = true
		m.mu.Unlock()
		m.failed(code)
		m.endCall()
		return false
	}
	pid := m.pid
	if pid == 0 {
		m.stopping = true
	}
	m.mu.Unlock()
	if pid != 0 {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
	}
	return true
}

func (m *mainProc) kill() {
	m.mu.Lock()
	pid := m.pid
	m.mu.Unlock()
	if pid != 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// unnamed reports whether the guest has no host name yet: the kernel's default, as neither
// the init config nor the network configuration (ip=, MMDS) gave one.
func unnamed() bool {
	h, err := os.Hostname()
	return err == nil && (h == "" || h == "(none)")
}

// execStart applies the overrides of req to the init config, as docker run applies its
// flags to an image's config.
func (c *InitConfig) execStart(req *agentwire.MainStart) *agentwire.ExecStart {
	entry, cmd := c.Entrypoint, c.Cmd
	if req.Entrypoint != nil {
		entry, cmd = *req.Entrypoint, nil
	}
	if len(req.Cmd) > 0 {
		cmd = req.Cmd
	}
	start := &agentwire.ExecStart{
		Args: append(append([]string{}, entry...), cmd...),
		Env:  append(append([]string{}, c.Env...), req.Env...),
		Dir:  c.WorkingDir, User: c.User,
		TTY: req.TTY, Rows: req.Rows, Cols: req.Cols, Stdin: req.Stdin,
	}
	if req.Dir != "" {
		start.Dir = req.Dir
	}
	if req.User != "" {
		start.User = req.User
	}
	return start
}

// mainCall serves a Main call: it starts the main process and streams it as exec does, except
// that the process outlives the call (its output then goes to the console).
func (s *Server) mainCall(ctx context.Context, stream *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut]) error {
	first, err := stream.Receive()
	if err != nil {
		return err
	}
	req := first.Main
	if req == nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("main process: the first message must be a main process request"))
	}
	if err := req.Check(); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	m := s.main
	if m == nil {
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("this agent does not wait for a main process: boot the guest with "+agentwire.MainWaitArg+" (MachineSpec.AgentMain), or run smartvm-agent with --wait-main"))
	}
	if !m.claim() {
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("the main process has already been started (or the guest is stopping)"))
	}
	defer m.endCall()
	if req.Hostname != "" && m.init.Hostname == "" && s.pid1 && unnamed() {
		setHostname(s.log, req.Hostname)
	}
	out := &callOut{stream: stream, console: s.console}
	start := m.init.execStart(req)
	if len(start.Args) == 0 || start.Args[0] == "" {
		m.failed(127)
		return out.exitWith(&startError{127, "no command to run: the image has neither an entrypoint nor a cmd; give one after -- (smartvm run IMAGE -- CMD)"})
	}
	makeWorkDir(start.Dir)
	cmd, err := resolve(start)
	if err != nil {
		se := &startError{126, err.Error()}
		errors.As(err, &se)
		m.failed(se.code)
		return out.exitWith(err)
	}
	// Detached, the call ends once the process runs: its output goes to the console.
	out.detach = req.Detach
	return s.runCommand(ctx, stream, out, cmd, start, m)
}

// waitMain waits for the main process to be started by a Main call and to end, and returns
// its exit code; false when ctx ended first (the main process, if any, is killed). As PID 1,
// SIGINT (Ctrl-Alt-Del) and SIGTERM are passed on to it as SIGTERM; one before it started
// ends the wait with 128+N. As PID 1, both are ignored from its return on.
func waitMain(ctx context.Context, log *slog.Logger, m *mainProc, pid1 bool) (int, bool) {
	var sigs chan os.Signal
	if pid1 {
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		// Once the main process has ended the machine goes down: a stop request (Ctrl-Alt-Del)
		// that comes now must not end PID 1 before it has synced.
		defer signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	}
	for {
		select {
		case <-m.done:
			// Give the output time to reach the call or the console, and the call time to
			// send the exit status, before the machine goes away.
			limit := time.After(outputGrace + time.Second)
			for _, ch := range []chan struct{}{m.drained, m.callDone} {
				select {
				case <-ch:
				case <-limit:
				}
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			log.Info("main process ended", "code", m.code)
			return m.code, true
		case sig := <-sigs:
			code := 128 + int(sig.(syscall.Signal))
			if m.stop(code) {
				log.Info("stopping the main process", "signal", sig)
			} else {
				log.Info("stopped before the main process started", "signal", sig)
			}
		case <-ctx.Done():
			m.kill()
			return 0, false
		}
	}
}
