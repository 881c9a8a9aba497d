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

// WaitAgent waits until the guest agent says that it is ready and answers it with the host's
// clock, which the agent sets. The agent announces itself by connecting to the host on
// AgentHostPort (ListenVsock), once it serves and again after a snapshot restore; WaitAgent
// listens while it waits and then stops listening. It returns ctx's error when ctx ends
// first, and errors wrapping ErrNoVsock for a VM without a vsock device.
func (m *Machine) WaitAgent(ctx context.Context) (AgentInfo, error) {
	ln, err := m.ListenVsock(AgentHostPort)
	if err != nil {
		return AgentInfo{}, err
	}
	defer ln.Close()
	info, err := waitAgentOn(ctx, ln)
	if err != nil {
		return AgentInfo{}, fmt.Errorf("wait for the agent of vm %s: %w", m.name, err)
	}
	return info, nil
}

// waitAgentOn accepts announcements on ln until one says "ready", answering each line with
// the host's clock.
func waitAgentOn(ctx context.Context, ln net.Listener) (AgentInfo, error) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return AgentInfo{}, ctx.Err()
			}
			return AgentInfo{}, err
		}
		if h, ok := readHello(ctx, conn); ok {
			return AgentInfo{Version: h.Version, PID1: h.PID1}, nil
		}
	}
}

// readHello reads announcement lines from conn, answering each with the host's clock, until
// one says "ready". It closes conn.
func readHello(ctx context.Context, conn net.Conn) (agentwire.Hello, bool) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		var h agentwire.Hello
		if json.Unmarshal(sc.Bytes(), &h) != nil {
			return h, false // not an agent: drop the connection
		}
		if err := json.NewEncoder(conn).Encode(agentwire.TimeSync{UnixNano: time.Now().UnixNano()}); err != nil {
			return h, false
		}
		if h.Event == "ready" {
			return h, true
		}
	}
	return agentwire.Hello{}, false
}
