package smartvm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// Agent returns a client of the guest agent (smartvm-agent) in the VM, reached through the
// VM's vsock device on AgentPort. Close it when done with it.
//
// Its calls fail with an error wrapping ErrNoVsock when the VM has no vsock device. While no
// agent listens in the guest (it is still booting, or the guest has none), a call keeps
// trying (as DialVsock does) until its ctx ends: bound it, for example with a Ping under a
// short timeout to learn whether the agent is up.
func (m *Machine) Agent() *Agent {
	return NewAgent(func(ctx context.Context) (net.Conn, error) {
		return m.DialVsock(ctx, AgentPort)
	})
}

// Command returns a Cmd that runs name with args in the VM's guest through its agent (see
// Agent), with a connection of its own that is closed when the command ends. ctx bounds the
// whole command, connecting included: when it ends, the command is killed in the guest.
func (m *Machine) Command(ctx context.Context, name string, args ...string) *Cmd {
	c := m.Agent().Command(ctx, name, args...)
	c.ownAgent = true
	return c
}

// MainCommand returns a Cmd that starts the VM's main process through its agent (see
// Agent.MainCommand and MachineSpec.AgentMain), with a connection of its own that is closed
// when the command ends. Until the agent answers (the guest may still be booting), the call
// keeps trying, as Agent's calls do; ctx bounds the whole call.
func (m *Machine) MainCommand(ctx context.Context, args ...string) *Cmd {
	c := m.Agent().MainCommand(ctx, args...)
	c.ownAgent, c.Hostname = true, guestHostname(m.name)
	return c
}

// AgentEvent is what the guest agent reports on AgentHostPort.
type AgentEvent struct {
	// Kind is "ready" (the agent serves: at start and after a snapshot restore) or "exit"
	// (the entrypoint it runs as PID 1 ended; the VM powers off next).
	Kind string
	// Version and PID1 describe the agent (with "ready").
	Version string
	PID1    bool
	// ExitCode is the entrypoint's exit code (with "exit"): 128+N for a signal N.
	ExitCode int
}

// maxExitCode bounds the exit code the agent reports (the guest's input): a process's exit
// status is 8 bits.
const maxExitCode = 255

// WatchAgent listens on AgentHostPort (ListenVsock) until ctx ends or the VM does, answers
// every announcement of the guest agent with the host's clock (which keeps the clocks of
// restored clones right) and passes each event to fn, from one goroutine at a time. It
// returns ctx's error, or an error wrapping ErrNoVsock for a VM without a vsock device.
//
// The last exit code it sees is the main process's: a VM kept as exited (KeepExited) that
// this process started records it (ExitInfo.MainExitCode).
func (m *Machine) WatchAgent(ctx context.Context, fn func(AgentEvent)) error {
	ln, err := m.ListenVsock(AgentHostPort)
	if err != nil {
		return err
	}
	defer ln.Close()
	return watchAgentOn(ctx, ln, func(e AgentEvent) bool {
		if e.Kind == "exit" {
			m.mainExit.Store(int32(e.ExitCode) + 1)
		}
		fn(e)
		return false
	})
}

// WaitAgent waits until the guest agent says that it is ready, answering it with the host's
// clock, and returns what it said. It listens on AgentHostPort while it waits (see
// WatchAgent). It returns ctx's error when ctx ends first, and errors wrapping ErrNoVsock for
// a VM without a vsock device.
func (m *Machine) WaitAgent(ctx context.Context) (AgentInfo, error) {
	ln, err := m.ListenVsock(AgentHostPort)
	if err != nil {
		return AgentInfo{}, err
	}
	defer ln.Close()
	var info AgentInfo
	err = watchAgentOn(ctx, ln, func(e AgentEvent) bool {
		info = AgentInfo{Version: e.Version, PID1: e.PID1}
		return e.Kind == "ready"
	})
	if err != nil {
		return AgentInfo{}, fmt.Errorf("wait for the agent of vm %s: %w", m.name, err)
	}
	return info, nil
}

// watchAgentOn serves the agent's connections on ln, one at a time (the agent keeps one),
// until fn returns true (then it returns nil) or ctx ends.
func watchAgentOn(ctx context.Context, ln net.Listener, fn func(AgentEvent) bool) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if serveAgentConn(ctx, conn, fn) {
			return nil
		}
	}
}

// serveAgentConn reads announcement lines from conn, passing each to fn and then answering
// it with the host's clock, until fn returns true (then it returns true) or the connection ends.
// It closes conn.
func serveAgentConn(ctx context.Context, conn net.Conn, fn func(AgentEvent) bool) bool {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		var h agentwire.Hello
		if json.Unmarshal(sc.Bytes(), &h) != nil {
			return false // not an agent: drop the connection
		}
		e := AgentEvent{Kind: agentwire.GuestText(h.Event), Version: agentwire.GuestText(h.Version), PID1: h.PID1}
		if h.Event == "exit" && (h.Code == nil || *h.Code < 0 || *h.Code > maxExitCode) {
			return false // an exit code no process has: not an agent, drop the connection
		}
		if h.Code != nil {
			e.ExitCode = *h.Code
		}
		// fn sees the event before the guest has its answer: the guest may power off once
		// answered, and an exit code must not be lost to that race.
		done := fn(e)
		if err := json.NewEncoder(conn).Encode(agentwire.TimeSync{UnixNano: time.Now().UnixNano()}); err != nil || done {
			return done
		}
	}
	return false
}
