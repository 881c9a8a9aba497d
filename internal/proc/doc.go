// Package proc spawns and supervises the firecracker process: its own process group (or
// session, when detached), stdio wired to files, a parent-death signal that holds even when the
// spawning goroutine's thread would otherwise exit, exit-status fan-out, and pidfd-based
// watching and signalling of processes this program did not start.
//
// A process is identified by its pid together with its start time (field 22 of
// /proc/<pid>/stat, in clock ticks since boot), so a recycled pid is never mistaken for the
// process that was recorded.
//
// Everything here is Linux-only; on other systems Start and Attach return an error that wraps
// errors.ErrUnsupported.
package proc
