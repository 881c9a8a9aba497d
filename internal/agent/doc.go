// Package agent is smartvm-agent, the program smartvm runs inside guests: it serves the agent
// protocol (package agentwire) so that the host can run commands and copy files, and, started
// as the guest's init (PID 1), it also sets the guest up, runs the configured entrypoint and
// powers the VM off when that ends. In main-wait mode (the kernel argument
// smartvm.main=wait, or --wait-main) it starts that entrypoint only when the host's Main call
// asks, with the host's overrides and its stdio attached to the call.
//
// Transports: AF_VSOCK port agentwire.AgentPort by default, and Unix or TCP listeners when
// asked (--listen). It never listens on the guest's network unless told to. With a vsock
// listener it also connects to the host on agentwire.HostPort to say it is ready (and, as PID
// 1, how the entrypoint ended); the host answers with its clock. A snapshot resets vsock
// transports; the agent notices its host connection drop, listens again, reconnects and takes
// the host's time, so a restored clone does not run with the snapshot's clock.
//
// Main is the whole program; cmd/smartvm-agent and cmd/smartvm (run under the name
// smartvm-agent) call it.
package agent
