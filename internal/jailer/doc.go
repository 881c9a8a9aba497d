// Package jailer runs firecracker through Firecracker's jailer: it builds the jailer's
// command line, maps paths between the host and the chroot, detects the host's cgroup layout
// and where limits go in it, allocates an unprivileged uid and gid per VM, puts the kernel
// and drives into the chroot, checks the jailer's version against firecracker's, and removes
// the jail afterwards.
//
// Layout: the jailer builds its chroot at <base>/<exec_file_name>/<id>/root (Chroot). Every
// path firecracker is given (its API socket, log, drives, vsock socket, snapshot files) is
// resolved inside the chroot, so Chroot.Host and Chroot.Inside convert between the two
// views.
//
// No orphans: the kernel clears a process's parent-death signal when it changes its uid, so
// a jailed firecracker would outlive an owner killed with SIGKILL. A Guard closes that gap. It
// is a tiny process, cloned from this one (no executable is needed), that is the init of a
// PID namespace of its own and holds a parent-death signal from the thread that cloned it;
// the jailer is started inside that namespace (Guard.Around). When the owner dies the guard
// gets SIGKILL, and the kernel then kills every process of its namespace, the jailed
// firecracker included, however deep in nested namespaces (--new-pid-ns) it runs.
package jailer
