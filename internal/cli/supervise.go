package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/smartvm/smartvm"
)

// superviseCmd is the hidden command a detached run or restore re-executes smartvm with.
const superviseCmd = "__supervise"

// supervisorLog is the file in the VM's directory that the supervisor's stderr goes to once
// the VM runs: its log records (at the --log-level run was given) and any crash report. It is
// removed with the directory.
const supervisorLog = "supervisor.log"

// statusFD is the supervisor's file descriptor for its status pipe (the first of ExtraFiles).
const statusFD = 3

// superviseRequest is what a detached run or restore sends the supervisor on its stdin.
type superviseRequest struct {
	Plan        runPlan `json:"plan"`
	Firecracker string  `json:"firecracker"`
	// Env holds the settings the supervisor's CLI reads from the environment, resolved by the
	// parent (flags included): the runtime root and the base image cache.
	Env map[string]string `json:"env"`
}

// superviseStatus is the supervisor's one report on its status pipe: the VM's name and pid
// once it runs, or why it could not start.
type superviseStatus struct {
	Name  string `json:"name,omitempty"`
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	// Exists: the VM's name is taken.
	Exists bool `json:"exists,omitempty"`
}

// startDetached starts a supervisor process that starts the VM and owns it, waits until it
// reports, and prints the VM's name.
func (a *app) startDetached(ctx context.Context, fc string, plan runPlan) error {
	name, err := a.spawnSupervisor(ctx, fc, plan)
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, name)
	return nil
}

// spawnSupervisor starts a supervisor process that starts the VM and owns it, waits until
// it reports, and returns the VM's name. An error for a name that is taken wraps
// smartvm.ErrExists.
func (a *app) spawnSupervisor(ctx context.Context, fc string, plan runPlan) (string, error) {
	exe := a.self
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return "", fmt.Errorf("find the smartvm executable to run the supervisor: %w", err)
		}
	}
	req := superviseRequest{Plan: plan, Firecracker: fc, Env: map[string]string{}}
	dir, err := a.runtimeDir()
	if err != nil {
		return "", err
	}
	staging, err := a.stagingDir()
	if err != nil {
		return "", err
	}
	agent, _ := a.agentBinary() // the supervisor installs the same agent
	for k, v := range map[string]string{envRuntimeDir: dir, envStagingDir: staging, envBaseImageDir: a.getenv(envBaseImageDir), envCIBucketURL: a.getenv(envCIBucketURL), envAgentBin: agent, envJailerBin: a.getenv(envJailerBin),
		envImageKernel: a.getenv(envImageKernel), envRootfsHeadroom: a.getenv(envRootfsHeadroom),
		envImageMaxSize: a.getenv(envImageMaxSize), envImageMaxFiles: a.getenv(envImageMaxFiles)} {
		if v != "" {
			req.Env[k] = v
		}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("start supervisor: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("start supervisor: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, superviseCmd, "--log-level", a.logLevel, "--log-format", a.logFormat)
	cmd.Stdin = bytes.NewReader(body)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/" // do not keep the caller's working directory busy
	// A session of its own: no controlling terminal, so the terminal's signals and hangup
	// do not reach it. Stdout and stderr are /dev/null.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if a.superviseHook != nil {
		a.superviseHook(cmd)
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return "", fmt.Errorf("start supervisor %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it ends while this process runs

	reported := make(chan superviseStatus, 1)
	go func() {
		var st superviseStatus
		// A failed decode leaves st empty: the supervisor died, and its exit status says more.
		_ = json.NewDecoder(r).Decode(&st)
		reported <- st
	}()
	var st superviseStatus
	select {
	case st = <-reported:
	case <-ctx.Done():
		// Interrupted while starting: the supervisor undoes the start (or stops the VM).
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-reported
		return "", ctx.Err()
	}
	switch {
	case st.Error != "" && st.Exists:
		return "", fmt.Errorf("%s: %w", st.Error, smartvm.ErrExists)
	case st.Error != "":
		return "", errors.New(st.Error)
	case st.Name == "":
		return "", fmt.Errorf("the supervisor (pid %d) ended before the vm started (%w): start it without --detach to see why",
			cmd.Process.Pid, <-exited)
	}
	return st.Name, nil
}

func (a *app) newSuperviseCmd() *cobra.Command {
	return &cobra.Command{
		Use:    superviseCmd,
		Short:  "Run a detached VM (started by run and restore --detach; not for direct use)",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			status := os.NewFile(statusFD, "status")
			if status == nil {
				return errors.New(superviseCmd + " is started by 'smartvm run --detach' and 'smartvm restore --detach'")
			}
			syscall.CloseOnExec(statusFD) // firecracker must not inherit it
			return a.supervise(cmd.Context(), status)
		},
	}
}

// supervise starts (or restores) the VM the request on stdin describes, owning it (firecracker dies with
// this process), reports to status, and waits until the VM ends, when the library removes
// everything it left. SIGTERM or SIGINT (ctx) stop the VM gracefully.
func (a *app) supervise(ctx context.Context, status io.WriteCloser) error {
	report := func(st superviseStatus) {
		_ = json.NewEncoder(status).Encode(st) // the parent may be gone; nothing to do then
		status.Close()
	}
	var req superviseRequest
	if err := json.NewDecoder(a.stdin).Decode(&req); err != nil {
		err = fmt.Errorf("read the supervisor request: %w", err)
		report(superviseStatus{Error: err.Error()})
		return err
	}
	a.lookupEnv = func(k string) (string, bool) {
		v, ok := req.Env[k]
		return v, ok
	}
	a.runtimeDirFlag, a.stagingDirFlag = "", ""
	mgr, err := a.manager(nil, append(append(req.Plan.managerOptions(), smartvm.WithFirecrackerBinary(req.Firecracker), stopNotifier(a.stderr)), a.jailerOptions(req.Firecracker)...)...)
	if err != nil {
		report(superviseStatus{Error: err.Error()})
		return err
	}
	defer mgr.Close()
	m, err := startVM(ctx, mgr, req.Plan)
	if err != nil {
		report(superviseStatus{Error: err.Error(), Exists: errors.Is(err, smartvm.ErrExists)})
		return err
	}
	// abort stops the VM that could not be made ready (its agent did not answer, or its
	// main process could not start) and reports why. The VM ran: --rm decides, as it does
	// for a foreground run that fails the same way, whether it is kept as exited (the default
	// when detached, --rm=false), with its serial log to tell why.
	abort := func(err error) error {
		err = fmt.Errorf("%w; the vm was stopped", err)
		_ = m.Kill()
		cerr := m.Close()
		switch {
		case req.Plan.Keep && cerr == nil:
			err = fmt.Errorf("%w and kept as exited: 'smartvm logs %s' shows its console, 'smartvm rm %s' removes it", err, m.Name(), m.Name())
		case req.Plan.Keep:
			_ = mgr.Remove(context.WithoutCancel(ctx), m.Name())
		}
		report(superviseStatus{Error: err.Error()})
		return err
	}
	if req.Plan.WaitAgent {
		if err := waitAgent(ctx, m); err != nil {
			return abort(err)
		}
	}
	if mp := req.Plan.Main; mp != nil {
		// The agent reports the main process's exit code on AgentHostPort: watching keeps it
		// for the VM's record once it ends (ps -a, inspect).
		_, stopWatch := watchExit(ctx, m)
		defer stopWatch()
		if err := startMainDetached(ctx, m, mp); err != nil {
			return abort(fmt.Errorf("start the main process: %w", err))
		}
	}
	report(superviseStatus{Name: m.Name(), PID: m.PID()})
	// From now on nobody reads this process's errors: keep them with the VM. Best effort;
	// when it fails (the VM has ended already), stderr stays /dev/null.
	if err := keepStderr(ctx, m); err != nil {
		a.log.Debug("keep the supervisor's stderr", "err", err)
	}
	select {
	case <-m.Done():
	case <-ctx.Done():
		if err := stopMachine(ctx, m, stopGrace); err != nil {
			a.log.Error("stop vm", "vm", m.Name(), "err", err)
		}
	}
	return m.Close()
}

// keepStderr sends this process's stderr to supervisor.log in m's directory, which the
// library removes with the VM (and never creates while the VM's directory is going away).
func keepStderr(ctx context.Context, m *smartvm.Machine) error {
	f, err := m.CreateFile(ctx, supervisorLog)
	if err != nil {
		return err
	}
	defer f.Close()
	return redirectStderr(f)
}
