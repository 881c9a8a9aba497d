package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// defaultPath is the PATH of commands whose environment does not set one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// outputGrace is how long output is still read after a command exits, for children it left
// behind that hold its stdout or stderr open (as os/exec's WaitDelay).
const outputGrace = 2 * time.Second

// startError is a command that cannot start: its shell-style exit code and the reason.
type startError struct {
	code int
	msg  string
}

func (e *startError) Error() string { return e.msg }

// command is a resolved ExecStart, ready to fork.
type command struct {
	path string
	argv []string
	env  []string
	dir  string
	cred *syscall.Credential
}

// resolve checks the user, directory and executable of start.
func resolve(start *agentwire.ExecStart) (*command, error) {
	cred, home, err := lookupUser(start.User)
	if err != nil {
		return nil, &startError{126, err.Error()}
	}
	env := []string{"PATH=" + defaultPath, "HOME=" + home}
	if start.TTY {
		env = append(env, "TERM=xterm-256color")
	}
	env = mergeEnv(env, start.Env)
	dir := start.Dir
	if dir == "" {
		dir = "/"
		if fi, err := os.Stat(home); err == nil && fi.IsDir() {
			dir = home
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, &startError{126, fmt.Sprintf("working directory %s: not a directory in the guest", dir)}
	}
	path, err := lookPath(start.Args[0], envValue(env, "PATH"), dir)
	if err != nil {
		return nil, err
	}
	return &command{path: path, argv: start.Args, env: env, dir: dir, cred: cred}, nil
}

// startFailed describes err, the failure to start c, named name, as user (as given; "" for
// the agent's own): exit code 127 for a missing file, else 126. The new process changes to
// the working directory as the user, so permission denied may be the directory's.
func (c *command) startFailed(name, user string, err error) *startError {
	code := 126
	if errors.Is(err, syscall.ENOENT) {
		code = 127
	}
	msg := fmt.Sprintf("%s: %s", name, err)
	if errors.Is(err, syscall.EACCES) && c.cred != nil {
		msg += fmt.Sprintf(" (as user %s in %s: the working directory and the program must be open to that user; choose another with -w or -u)", user, c.dir)
	}
	return &startError{code, msg}
}

// makeWorkDir creates dir, the main process's working directory, with mode 0755 (owned by
// root, as the agent is) when the guest lacks it, as docker run does for an image's WorkingDir
// or -w: image builders that only write the config leave the directory out. A failure is left
// for resolve to report.
func makeWorkDir(dir string) {
	if !filepath.IsAbs(dir) {
		return
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		_ = os.MkdirAll(dir, 0o755)
	}
}

// mergeEnv adds KEY=VALUE entries to env; a later key replaces an earlier one in place.
func mergeEnv(env, add []string) []string {
	idx := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			env[i] = kv
			continue
		}
		idx[k] = len(env)
		env = append(env, kv)
	}
	return env
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, _ := strings.Cut(env[i], "="); k == key {
			return v
		}
	}
	return ""
}

// lookPath finds name as a shell would: as a path when it has a slash (relative to dir), else
// in the directories of pathList.
func lookPath(name, pathList, dir string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fs.ErrPermission
		}
		return nil
	}
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		switch err := check(p); {
		case errors.Is(err, fs.ErrNotExist):
			return "", &startError{127, fmt.Sprintf("%s: no such file", name)}
		case err != nil:
			return "", &startError{126, fmt.Sprintf("%s: not an executable file", name)}
		}
		return p, nil
	}
	denied := false
	for _, d := range filepath.SplitList(pathList) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		switch err := check(p); {
		case err == nil:
			return p, nil
		case errors.Is(err, fs.ErrPermission):
			denied = true
		}
	}
	if denied {
		return "", &startError{126, fmt.Sprintf("%s: permission denied", name)}
	}
	return "", &startError{127, fmt.Sprintf("%s: command not found in the guest (PATH=%s)", name, pathList)}
}

// lookupUser resolves "", "name", "uid", "name:group" or "uid:gid" with the guest's
// /etc/passwd and /etc/group. It returns the credential and the home directory.
// No user means the agent's own (root in a guest), with no credential to set.
func lookupUser(spec string) (*syscall.Credential, string, error) {
	if spec == "" {
		home := "/"
		if u, ok := lookupPasswd(strconv.Itoa(os.Getuid()), true); ok && u.home != "" {
			home = u.home
		}
		return nil, home, nil
	}
	uname, gname, hasGroup := strings.Cut(spec, ":")
	_, nerr := strconv.ParseUint(uname, 10, 32)
	numeric := nerr == nil
	u, ok := lookupPasswd(uname, numeric)
	switch {
	case !ok && numeric:
		// A numeric uid need not be in /etc/passwd.
		u = passwdEntry{uid: uname, gid: "0", home: "/"}
	case !ok:
		return nil, "", fmt.Errorf("user %q: no such user in the guest's /etc/passwd", uname)
	}
	uid, err := strconv.ParseUint(u.uid, 10, 32)
	if err != nil {
		return nil, "", fmt.Errorf("user %q: bad uid %q in /etc/passwd", uname, u.uid)
	}
	gid, err := strconv.ParseUint(u.gid, 10, 32)
	if err != nil {
		return nil, "", fmt.Errorf("user %q: bad gid %q in /etc/passwd", uname, u.gid)
	}
	var groups []uint32
	if hasGroup {
		if n, nerr := strconv.ParseUint(gname, 10, 32); nerr == nil {
			gid = n
		} else {
			g, ok := lookupGroupID(gname)
			if !ok {
				return nil, "", fmt.Errorf("group %q: no such group in the guest's /etc/group", gname)
			}
			if gid, err = strconv.ParseUint(g, 10, 32); err != nil {
				return nil, "", fmt.Errorf("group %q: bad gid %q in /etc/group", gname, g)
			}
		}
	} else if u.name != "" {
		// As initgroups(3): the primary group and every group listing the user.
		groups = append(groups, uint32(gid))
		for _, id := range supplementaryGroups(u.name) {
			if n, perr := strconv.ParseUint(id, 10, 32); perr == nil && n != gid {
				groups = append(groups, uint32(n))
			}
		}
	}
	home := u.home
	if home == "" {
		home = "/"
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, home, nil
}

// stdio is the agent's end of a command's standard streams.
type stdio struct {
	stdin   io.WriteCloser // nil: no stdin from the client
	outputs []*os.File     // stdout, stderr (or the PTY master alone)
	pty     *os.File
	child   []*os.File // closed in the agent once the child has them
	// hold is the PTY's slave end, kept open by the agent until the command has exited: the
	// master reads end-of-file (EIO) once the last slave closes, and a command's last output
	// written just before it exits was seen lost to that EIO under load.
	hold *os.File
}

// release closes hold: the master then reads the rest of the output, and EIO once the
// command's own children have closed the terminal too.
func (s *stdio) release() {
	if s.hold != nil {
		s.hold.Close()
		s.hold = nil
	}
}

func (s *stdio) closeChild() {
	for _, f := range s.child {
		f.Close()
	}
	s.child = nil
}

func (s *stdio) closeAll() {
	s.closeChild()
	s.release()
	if s.stdin != nil {
		s.stdin.Close()
	}
	for _, f := range s.outputs {
		f.Close()
	}
}

// pipes makes the stdio of a command without a TTY.
func pipes(withStdin bool) (*stdio, error) {
	s := &stdio{}
	var err error
	var in *os.File
	if withStdin {
		var w *os.File
		if in, w, err = os.Pipe(); err != nil {
			return nil, err
		}
		s.stdin = w
	} else if in, err = os.Open(os.DevNull); err != nil {
		return nil, err
	}
	s.child = append(s.child, in)
	for range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			s.closeAll()
			return nil, err
		}
		s.outputs = append(s.outputs, r)
		s.child = append(s.child, w)
	}
	return s, nil
}

// openPTY makes a new pseudo-terminal of the given size: the command gets the terminal on all
// three streams.
func openPTY(rows, cols uint16) (*stdio, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	var n uint32
	rc, err := master.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			if err = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); err != nil {
				return
			}
			n, err = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("unlock a pseudo-terminal: %w", err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	hold, err := unix.FcntlInt(slave.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		master.Close()
		slave.Close()
		return nil, fmt.Errorf("open a pseudo-terminal: %w", err)
	}
	s := &stdio{stdin: master, outputs: []*os.File{master}, pty: master, child: []*os.File{slave, slave, slave},
		hold: os.NewFile(uintptr(hold), slave.Name())}
	if err := s.resize(rows, cols); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

func (s *stdio) resize(rows, cols uint16) error {
	if s.pty == nil {
		return errors.New("the command has no TTY")
	}
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	rc, err := s.pty.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) {
		err = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("resize the TTY: %w", err)
	}
	return nil
}

func (s *Server) exec(ctx context.Context, stream *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut]) error {
	first, err := stream.Receive()
	if err != nil {
		return err
	}
	start := first.Start
	if start == nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("exec: the first message must name a command"))
	}
	// Check refuses an empty command too.
	if err := start.Check(); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("exec: %w", err))
	}
	out := &callOut{stream: stream}
	cmd, err := resolve(start)
	if err != nil {
		return out.exitWith(err)
	}
	return s.runCommand(ctx, stream, out, cmd, start, nil)
}

// errCallEnded is what sending on a call that has ended gives.
var errCallEnded = errors.New("the call has ended")

// callOut is the sending side of an Exec or Main call. Once the call has ended, the output of
// a main process goes to the console instead (exec's is dropped, and its readers stop).
type callOut struct {
	mu      sync.Mutex
	stream  *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut]
	ended   bool
	console [2]io.Writer // stdout, stderr; nil for exec
	// detach ends the call once the command has started (a detached main process).
	detach bool
}

func (c *callOut) send(m *agentwire.ExecOut) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return errCallEnded
	}
	if err := c.stream.Send(m); err != nil {
		c.ended = true
		return err
	}
	return nil
}

// output sends b as output of stream (agentwire.Stdout or Stderr). It fails only when the call
// has ended and there is no console to write to.
func (c *callOut) output(stream int, b []byte) error {
	if c.send(&agentwire.ExecOut{Stream: stream, Data: b}) == nil {
		return nil
	}
	w := c.console[stream-agentwire.Stdout]
	if w == nil {
		return errCallEnded
	}
	_, _ = w.Write(b) // a console that fails to take output must not stop the process
	return nil
}

// end marks the call as over: nothing is sent on it from now on (the handler returns).
func (c *callOut) end() {
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
}

// exitWith reports a command that could not start.
func (c *callOut) exitWith(err error) error {
	se := &startError{126, err.Error()}
	errors.As(err, &se)
	return c.send(&agentwire.ExecOut{Exit: &agentwire.ExitStatus{Code: se.code, Error: se.msg}})
}

// runCommand starts cmd with the stdio start asks for and streams it on the call until it
// ends. With main set it is the guest's main process: it runs in a session of its own, main
// learns its pid and exit status, and it lives on when the call ends early, writing to the
// console.
func (s *Server) runCommand(ctx context.Context, stream *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut], out *callOut, cmd *command, start *agentwire.ExecStart, main *mainProc) error {
	var sio *stdio
	var err error
	if start.TTY {
		sio, err = openPTY(start.Rows, start.Cols)
	} else {
		sio, err = pipes(start.Stdin)
	}
	if err != nil {
		if main != nil {
			main.failed(126)
		}
		return out.exitWith(err)
	}
	files := make([]uintptr, len(sio.child))
	for i, f := range sio.child {
		files[i] = f.Fd()
	}
	sys := &syscall.SysProcAttr{Credential: cmd.cred, Setpgid: !start.TTY, Setsid: start.TTY, Setctty: start.TTY}
	if main != nil {
		// A session of its own, as an init's child: signals go to its whole group.
		sys.Setpgid, sys.Setsid = false, true
	}
	pid, wait, err := s.procs.start(cmd.path, cmd.argv, &syscall.ProcAttr{Dir: cmd.dir, Env: cmd.env, Files: files, Sys: sys})
	sio.closeChild()
	if err != nil {
		sio.closeAll()
		se := cmd.startFailed(start.Args[0], start.User, err)
		if main != nil {
			main.failed(se.code)
		}
		return out.exitWith(se)
	}
	if main != nil || out.detach {
		// The call may end before the command: nothing here waits for it to release hold.
		sio.release()
	}
	if main != nil {
		wait = main.started(pid, wait)
	}
	s.log.Debug("exec", "pid", pid, "args", start.Args, "tty", start.TTY, "main", main != nil)
	if err := out.send(&agentwire.ExecOut{Started: &agentwire.Started{PID: pid}}); err != nil && main == nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-wait
		sio.closeAll()
		return err
	}
	if out.detach {
		out.end()
	}

	// Output: one reader per stream, each sending until EOF (EIO for a PTY whose last
	// holder closed it).
	var outWG sync.WaitGroup
	for i, f := range sio.outputs {
		outWG.Add(1)
		go func() {
			defer outWG.Done()
			buf := make([]byte, agentwire.ChunkSize)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if out.output(agentwire.Stdout+i, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	drained := make(chan struct{})
	go func() { outWG.Wait(); close(drained) }()
	if main != nil {
		// The outputs outlive the call when it ends early: closed once read to the end.
		go func() {
			<-drained
			sio.closeAll()
			main.outputDrained()
		}()
	} else {
		defer sio.closeAll()
	}
	// Input: stdin, signals and resizes until the client ends its side.
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		for {
			m, err := stream.Receive()
			if err != nil {
				if sio.pty == nil && sio.stdin != nil {
					sio.stdin.Close()
				}
				return
			}
			switch {
			case len(m.Stdin) > 0 && sio.stdin != nil:
				if _, err := sio.stdin.Write(m.Stdin); err != nil {
					s.log.Debug("exec stdin", "pid", pid, "err", err)
				}
			case m.CloseStdin && sio.pty != nil:
				_, _ = sio.pty.Write([]byte{4}) // ^D: end of input on a terminal
			case m.CloseStdin && sio.stdin != nil:
				sio.stdin.Close()
			case m.Signal != 0:
				target := pid
				if sio.pty != nil || main != nil {
					target = -pid
				}
				_ = syscall.Kill(target, syscall.Signal(m.Signal))
			case m.Resize != nil:
				_ = sio.resize(m.Resize.Rows, m.Resize.Cols)
			}
		}
	}()

	if out.detach {
		// The client ends its side once it has the pid; then the call ends.
		select {
		case <-inputDone:
		case <-ctx.Done():
		}
		return nil
	}
	var ws syscall.WaitStatus
	select {
	case ws = <-wait:
	case <-ctx.Done():
		if main != nil {
			out.end() // the main process runs on, writing to the console
			return ctx.Err()
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		ws = <-wait
	}
	sio.release()
	select {
	case <-drained:
	case <-time.After(outputGrace):
		for _, f := range sio.outputs {
			f.Close()
		}
		<-drained
	case <-ctx.Done():
		out.end()
		return ctx.Err()
	}
	status := exitStatus(ws)
	s.log.Debug("exit", "pid", pid, "code", status.Code, "signal", status.Signal)
	err = out.send(&agentwire.ExecOut{Exit: &status})
	out.end()
	return err
}

// exitStatus is ws as the protocol reports it: 128+N for a signal N.
func exitStatus(ws syscall.WaitStatus) agentwire.ExitStatus {
	status := agentwire.ExitStatus{Code: ws.ExitStatus()}
	if ws.Signaled() {
		status.Signal = int(ws.Signal())
		status.Code = 128 + status.Signal
	}
	return status
}
