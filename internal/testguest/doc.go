// Package testguest is smartvm's own tiny x86-64 test guest: a few hundred instructions that
// Firecracker boots as its kernel, emitted by Go as an ELF so that no toolchain is needed at run
// time. The real-Firecracker tests boot it, and the CLI's built-in "hello" image is this ELF.
//
// guest.S is the source of truth. The listing in guest.go emits the same machine code; a test
// assembles guest.S with binutils' as and ld (when installed) and compares the bytes, and
// another compares the listing with the file line by line.
//
// The ELF has one PT_LOAD segment at LoadAddress, entered in 64-bit long mode as Firecracker's
// Linux boot protocol does (boot_params at %rsi). The guest reads the word
// smartvm.test=<mode> from its kernel command line (BootArgs builds one) and then:
//
//   - ModeHello, also when the word is absent: prints HelloLine, then resets the CPU through
//     the i8042, so Firecracker exits with status 0;
//   - ModeHalt: prints HaltLine, then halts forever with interrupts off (Ctrl-Alt-Del has no
//     effect);
//   - ModeCounter: prints TickLine(0), TickLine(1), ... about every 5 ms of TSC time (assuming
//     a TSC near 2.6 GHz), and resets when the i8042 reports data (SendCtrlAltDel);
//   - ModeCAD: prints ReadyLine, then polls the i8042 and resets on data;
//   - ModeVsockEcho: finds the virtio-mmio vsock device (ID 19) from the MMIODeviceKey words
//     Firecracker adds to the command line, brings it up without interrupts (virtio-mmio
//     version 2, split virtqueues whose used rings it polls), prints VsockReadyLine, and then
//     accepts vsock connections to VsockEchoPort and echoes every byte back; it also calls
//     the host on VsockEchoPort (Firecracker connects to the device's uds_path_52), again
//     about VsockCallbackPause after each call ends or finds no listener, and resets on i8042
//     data. Without a vsock device it prints NoVsockLine and resets. It keeps no connection
//     state, so connections survive a snapshot of the VM it runs in, and it needs 25 MiB of
//     guest memory or more (its virtqueues and buffers are at 24 MiB).
//
// Any other mode prints UnknownModeLine and resets. Every line ends with "\n", written to the
// 16550 serial port at 0x3f8 (Firecracker's stdout).
//
// The counter, cad and vsock-echo modes poll in a loop and so keep their vCPU busy.
package testguest
