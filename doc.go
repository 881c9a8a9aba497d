// Package smartvm runs Firecracker microVMs.
//
// A MachineSpec describes a VM: kernel and boot arguments (or a base image), vCPUs and memory,
// drives, network interfaces and devices, and how to boot it. A Manager owns a runtime root
// (by default /dev/shm/.smartvm/runtime) shared safely between processes, and turns specs
// into running Machines:
//
//	mgr, err := smartvm.NewManager(smartvm.WithFirecrackerBinary("/usr/local/bin/firecracker"))
//	...
//	defer mgr.Close()
//	m, err := mgr.Start(ctx, smartvm.MachineSpec{Kernel: "vmlinux", Drives: ...})
//	...
//	err = m.Stop(ctx) // Ctrl-Alt-Del, then SIGTERM, then SIGKILL
//	err = m.Close()   // removes the socket, staged drives and the VM's directory
//
// # Lifecycle
//
// Start → Pause/Resume → Stop or Kill (or the guest ends it) → Wait → Close. Start's ctx
// bounds start-up only (spawning, waiting for the API socket, configuring, booting); the
// running VM belongs to its Machine and ends through Stop, Kill, Close, or by itself. When
// any step of Start fails, everything done so far is undone and a *StartError explains the
// step, with the tail of Firecracker's log and, if it died, an *ExitError.
//
// # Ownership
//
// By default the process that calls Start owns the VM: Firecracker is killed when this
// process dies, however it dies (a parent-death signal), and when the VM's process ends for
// any reason its Machine removes everything the VM left on the host. A VM started with the
// Detached option outlives this process instead; another process adopts it with
// Manager.Attach (once this process has exited or called Machine.Release), and a later
// Manager or Manager.Reap removes what it leaves once it has ended. The library never
// installs signal handlers; Manager.HandleSignals is an opt-in helper that stops the
// manager's VMs on SIGINT or SIGTERM.
//
// # Console and network
//
// The guest's serial console goes to serial.log in the VM's directory (Machine.Console
// follows it). With MachineSpec.SerialInput, Firecracker's stdin is the FIFO serial.in, and
// Machine.ConsoleInput writes to the guest's serial input.
//
// With MachineSpec.Network, Start builds the VM's network with package netdev before the
// boot: a TAP device per NIC with a /30 from an address pool (leases under <root>/net), the
// guest MAC from which Firecracker's CI images configure themselves, optionally NAT and a
// network namespace of the VM's own, in which Firecracker then runs. It needs root (or
// CAP_NET_ADMIN, and CAP_SYS_ADMIN for a namespace); without, Start fails with an error
// wrapping netdev.ErrPermission that says how to grant it. The network is recorded in
// state.json, MachineInfo.GuestIP is where the host reaches the guest, and the network is
// removed when the VM ends, or by reaping when its owner died. Networks are built and removed
// in the network namespace of the calling thread: the host's, in an ordinary program.
//
// # vsock
//
// With MachineSpec.Vsock the VM has a virtio-vsock device whose host side is a Unix socket
// (Machine.VsockSocket). Machine.DialVsock connects to a port in the guest, doing
// Firecracker's CONNECT handshake and retrying until a guest program listens or its ctx
// ends; Machine.ListenVsock accepts the connections guest programs make to the host (CID 2).
//
// # Snapshots
//
// Machine.Snapshot saves a VM (state, memory, and copies of its ephemeral drives) into a
// directory; OpenSnapshot reads it back and Manager.Restore starts it again in a fresh
// Firecracker of the same minor release, in the same runtime root and under the same name.
//
// # Errors
//
// Errors wrap their causes with %w. Callers branch with errors.Is on ErrExists,
// ErrNotFound, ErrNotRunning, ErrClosed, ErrNoConsoleInput, ErrNoVsock, ErrNoVsockListener
// and ErrPaused (and errors.ErrUnsupported for
// features the installed Firecracker lacks), and with errors.As on *StartError, *ExitError
// and *fcapi.APIError.
//
// The library logs through the *slog.Logger given with WithLogger and is silent otherwise;
// it never prints, panics or reads environment variables.
package smartvm
