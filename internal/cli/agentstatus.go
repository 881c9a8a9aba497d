package cli

import (
	"context"
	"sync"
	"time"

	"github.com/smartvm/smartvm"
)

// agentPingTimeout bounds how long ps and inspect wait for a guest agent to answer.
const agentPingTimeout = 500 * time.Millisecond

// agentStatus is whether a VM's guest agent answers, as ps and inspect show it.
type agentStatus struct {
	Up      bool   `json:"up"`
	Version string `json:"version,omitempty"`
	PID1    bool   `json:"pid1,omitempty"`
}

// agentStatusOf pings m's agent; nil when m has no vsock device (no agent can be reached).
func agentStatusOf(ctx context.Context, m *smartvm.Machine) *agentStatus {
	if m.Spec().Vsock == nil {
		return nil
	}
	ag := m.Agent()
	defer ag.Close()
	ctx, cancel := context.WithTimeout(ctx, agentPingTimeout)
	defer cancel()
	info, err := ag.Ping(ctx)
	if err != nil {
		return &agentStatus{}
	}
	return &agentStatus{Up: true, Version: info.Version, PID1: info.PID1}
}

// agentStatuses pings the agents of the listed VMs that have a vsock device, all at once.
func agentStatuses(ctx context.Context, mgr *smartvm.Manager, infos []smartvm.MachineInfo) []*agentStatus {
	out := make([]*agentStatus, len(infos))
	var wg sync.WaitGroup
	for i, info := range infos {
		if info.Spec.Vsock == nil || info.State == smartvm.StateExited {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := mgr.Attach(ctx, info.Name)
			if err != nil {
				return // it ended meanwhile
			}
			defer m.Release()
			out[i] = agentStatusOf(ctx, m)
		}()
	}
	wg.Wait()
	return out
}

// label is the AGENT column of ps.
func (s *agentStatus) label() string {
	switch {
	case s == nil:
		return "-"
	case s.Up:
		return "up"
	}
	return "down"
}
