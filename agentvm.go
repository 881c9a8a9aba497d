package smartvm

import (
	"context"
	"net"
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
