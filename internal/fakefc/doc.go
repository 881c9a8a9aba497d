// Package fakefc is a fake Firecracker that lets smartvm be tested without KVM. It mimics a
// chosen release (DefaultVersion, 1.14.2, unless Options.Version or SMARTVM_FAKEFC_VERSION
// names another release embedded in internal/fcspec, or a patch release of one) closely
// enough that a client cannot tell it from the real one: the same command line, the same
// HTTP behaviour and messages, the same state machine, the same process exits.
//
// # Three ways to use it
//
//   - NewHandler returns an http.Handler with the whole API for one VM, for httptest.
//   - Listen serves it on a Unix socket in this process, as Firecracker does: the socket file
//     appears, then accepts connections after Options.SocketDelay (the bind-to-listen race).
//     Close stops it and removes the socket.
//   - Main is the firecracker executable. A test binary poses as firecracker with
//     testutil.Main(m, map[string]func([]string) int{"firecracker": fakefc.Main}) in its
//     TestMain and testutil.Link(t, "firecracker"); cmd/fakefirecracker runs it by hand.
//     Main reads SMARTVM_FAKEFC_VERSION, SMARTVM_FAKEFC_MODE (comma-separated failure modes)
//     and SMARTVM_FAKEFC_SOCKET_DELAY (a Go duration).
//
// # What it checks
//
// Every request body is decoded as Firecracker decodes it: against the Rust type its serde
// derives, adapted to the release with that release's spec (loaded with kin-openapi). Unknown
// fields are rejected except where Firecracker accepts them (TokenBucket, Metrics, the
// CPU-template modifiers, network overrides, the hinting command), and errors carry
// serde_json's wording and positions: "An error occurred when deserializing the json body of
// a request: unknown field `x`, expected `action_type` at line 1 column 34." Paths, IDs,
// methods, empty and oversized bodies, more than 10 connections, the pre- and post-boot rules,
// the fresh-process rule for snapshot loads, device checks and InstanceStart's kernel checks
// answer with the real messages, and GET /, /version, /machine-config and /vm/config report
// what was configured. Deprecated fields add "Deprecation: true". Log lines use Firecracker's
// format on Options.Log or the --log-path file; FlushMetrics writes a JSON line beginning with
// utc_timestamp_ms.
//
// # The guest
//
// After InstanceStart the fake behaves as the guest would. When the kernel is the project's
// test guest (internal/testguest), the mode comes from smartvm.test=<mode> in the boot
// arguments and the serial output is the guest's own: hello prints its line and resets (the
// process exits 0), halt prints its line and ignores Ctrl-Alt-Del, counter prints a tick every
// 5 ms (frozen while paused) and cad prints its ready line; both reset on Ctrl-Alt-Del;
// vsock-echo prints its vsock ready line, echoes connections to vsock port 52, calls the
// host on uds_path_52 (again 50 ms after each call ends or finds no listener) and resets on
// Ctrl-Alt-Del (without a vsock device it says so and resets). Any
// other ELF kernel is treated as Linux: a short boot log on the serial console when the
// command line names console=ttyS0, then idle until Ctrl-Alt-Del reboots it. Serial output
// goes to Options.Stdout (the process's stdout) or to PUT /serial's file. Virtio devices never
// activate, as with a guest without drivers, so balloon and memory-hotplug updates get the
// real "not activated" answers; the vsock device is the exception.
//
// # vsock
//
// The vsock device's uds_path is a Unix listener, as Firecracker's. Until the guest's driver
// is up (the vsock-echo guest's, or a Linux guest's at once) host connections are not read;
// then "CONNECT <port>\n" (read as Firecracker reads it) gets "OK <port>\n", with host ports
// from 1<<30 up, when the guest listens on the port, and is closed when it does not. A paused
// guest lets a request time out after 2 s, and stops echoing until resumed. Connections
// close when the process ends; the socket file stays. Options.VsockForward
// (SMARTVM_FAKEFC_VSOCK_FORWARD=PORT=PATH,...) gives the guest listeners on more ports: host
// Unix sockets, such as an agent run on the host, that connections to those ports are
// relayed to.
//
// # Process behaviour
//
// A guest reset or Ctrl-Alt-Del ends the process with status 0; a failed snapshot load ends
// it with status 1 after its 400; a request that makes the release panic (v1.7.0 and a new
// balloon statistics interval before the guest activated the device) gets no answer and the
// process aborts; SIGTERM keeps its default action (death by the signal);
// an invalid --id or an unreadable --config-file aborts (SIGABRT) as Firecracker's panics do;
// a leftover socket path exits 1; a bad --level exits 152 and bad arguments 153. In process,
// the end of the emulated process closes Handler.Done and Server.Done, and later requests get
// no answer. Snapshots write a state file that starts like Firecracker's (its magic and
// format version, so --describe-snapshot reads either) and a sparse memory file of
// mem_size_mib; loading one restores the configuration and the guest where it was, paused or,
// with resume_vm, running.
//
// # Failure modes
//
// ModeExitEarly, ModeNoSocket, ModeSlowSocket, ModeFailStart, ModeIgnoreCtrlAltDel, ModeSlowSnapshot and
// ModeIgnoreSigterm make the process misbehave on purpose, for tests of the code that drives
// it.
//
// The TestReal tests run the package's conformance scenarios against the Firecracker named
// by SMARTVM_FIRECRACKER_BIN and against the fake mimicking the same release, and require
// identical transcripts.
package fakefc
