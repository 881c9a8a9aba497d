package agentwire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"connectrpc.com/connect"
)

// ExecIO is where a command's stdio goes on the client side. A nil Stdin gives the command
// /dev/null; nil Stdout or Stderr discards that output.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Process is a command started by Exec.
type Process struct {
	op     string // "exec" or "main process", for errors
	pid    int
	stream *connect.BidiStreamForClient[ExecIn, ExecOut]
	cancel context.CancelFunc

	sendMu sync.Mutex
	done   chan struct{}
	status ExitStatus
	err    error
}

// Exec starts a command in the guest and returns once it runs. A command that cannot start
// (not found, bad user or directory) is reported by Wait as its ExitStatus, with Code 127 or
// 126 and the reason in Error, like a shell would. ctx ends the call: cancelling it kills the
// command.
func (c *Client) Exec(ctx context.Context, start ExecStart, stdio ExecIO) (*Process, error) {
	if err := start.Check(); err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	start.Stdin = stdio.Stdin != nil
	return c.startProcess(ctx, "exec", c.exec, &ExecIn{Start: &start}, stdio, false)
}

// Main starts the guest's main process (see MainStart) and returns once it runs, as Exec
// does; start.Stdin is set from stdio. The agent accepts one Main call, and only when it
// waits for one (MainWaitArg); otherwise the call fails with a *RemoteError. With
// start.Detach, stdio is not used and the returned Process has ended (its ExitStatus is
// zero unless the process could not start): the main process runs on with the guest's console.
// Unlike Exec, a call that ends early leaves the main process running, its output going to the
// guest's console.
func (c *Client) Main(ctx context.Context, start MainStart, stdio ExecIO) (*Process, error) {
	if start.Detach {
		stdio = ExecIO{}
	}
	start.Stdin = stdio.Stdin != nil
	if err := start.Check(); err != nil {
		return nil, fmt.Errorf("main process: %w", err)
	}
	return c.startProcess(ctx, "main process", c.main, &ExecIn{Main: &start}, stdio, start.Detach)
}

// startProcess makes the call of Exec or Main: it sends first and waits for the process to
// start. With detach, the call ends there.
func (c *Client) startProcess(ctx context.Context, op string, client *connect.Client[ExecIn, ExecOut], first *ExecIn, stdio ExecIO, detach bool) (*Process, error) {
	ctx, cancel := context.WithCancel(ctx)
	p := &Process{op: op, stream: client.CallBidiStream(ctx), cancel: cancel, done: make(chan struct{})}
	// HTTP/2 notices a cancelled call only once the request body ends: end it then.
	context.AfterFunc(ctx, func() {
		p.sendMu.Lock()
		_ = p.stream.CloseRequest()
		p.sendMu.Unlock()
	})
	if err := p.send(first); err != nil {
		cancel()
		return nil, p.recvError(err)
	}
	reply, err := p.stream.Receive()
	if err != nil {
		cancel()
		return nil, p.recvError(err)
	}
	switch {
	case reply.Started != nil:
		p.pid = reply.Started.PID
		if detach {
			// End the request; the agent then ends the call.
			p.sendMu.Lock()
			_ = p.stream.CloseRequest()
			p.sendMu.Unlock()
			for {
				if _, err := p.stream.Receive(); err != nil {
					break
				}
			}
			p.finish(nil)
			return p, nil
		}
	case reply.Exit != nil:
		p.status = reply.Exit.checked()
		p.finish(nil)
		return p, nil
	default:
		cancel()
		return nil, fmt.Errorf("%s: the agent sent output before the command started", op)
	}
	// The request side stays open after stdin ends: signals and resizes travel on it.
	if stdio.Stdin != nil {
		go p.pumpStdin(stdio.Stdin)
	}
	go p.receive(stdio.Stdout, stdio.Stderr)
	return p, nil
}

// recvError names the reason a call failed: a Send that failed with io.EOF means the agent
// ended the call, and Receive has its reason.
func (p *Process) recvError(err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := p.stream.Receive(); rerr != nil && !errors.Is(rerr, io.EOF) {
			err = rerr
		} else {
			err = io.ErrUnexpectedEOF
		}
	}
	return callError(p.op, "", err)
}

// PID is the command's process id in the guest; 0 when it did not start.
func (p *Process) PID() int { return p.pid }

func (p *Process) send(m *ExecIn) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.stream.Send(m)
}

func (p *Process) pumpStdin(r io.Reader) {
	// A failed read ends stdin too: the command sees EOF.
	_ = sendChunks(r, func(b []byte) error { return p.send(&ExecIn{Stdin: b}) })
	_ = p.send(&ExecIn{CloseStdin: true})
}

func (p *Process) receive(stdout, stderr io.Writer) {
	var err error
	var exit *ExitStatus
	// One message, reused (reset each time): output does not allocate a buffer per chunk.
	conn, cerr := p.stream.Conn()
	var m ExecOut
	for {
		m = ExecOut{Data: m.Data[:0]}
		rerr := cerr
		if rerr == nil {
			rerr = conn.Receive(&m)
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && exit == nil && err == nil {
				err = callError(p.op, "", rerr)
			}
			break
		}
		if m.Exit != nil {
			exit = m.Exit
			continue
		}
		w := stdout
		if m.Stream == Stderr {
			w = stderr
		}
		if w != nil && len(m.Data) > 0 && err == nil {
			if _, werr := w.Write(m.Data); werr != nil {
				// Stop reading: the agent's writes block, then the call ends.
				err = fmt.Errorf("%s: write output: %w", p.op, werr)
				p.cancel()
			}
		}
	}
	if err == nil && exit == nil {
		err = callError(p.op, "", io.ErrUnexpectedEOF)
	}
	if exit != nil {
		p.status = exit.checked()
	}
	p.finish(err)
}

func (p *Process) finish(err error) {
	p.err = err
	p.cancel()
	close(p.done)
}

// Signal sends the signal number sig to the command (its process group with a TTY).
func (p *Process) Signal(sig int) error {
	return p.control(&ExecIn{Signal: sig})
}

// Resize changes the size of the command's TTY.
func (p *Process) Resize(rows, cols uint16) error {
	return p.control(&ExecIn{Resize: &WinSize{Rows: rows, Cols: cols}})
}

func (p *Process) control(m *ExecIn) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s: the command has ended", p.op)
	default:
	}
	if err := p.send(m); err != nil {
		return fmt.Errorf("%s: %w", p.op, err)
	}
	return nil
}

// Done is closed when the call has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the command to end and its output to be written. The error is about the call
// (the connection broke, writing output failed); the command's own failure is in ExitStatus.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}
