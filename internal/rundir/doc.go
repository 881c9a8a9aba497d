// Package rundir manages smartvm's runtime root: one directory per VM holding its API socket,
// logs, serial console, staged drives and state.json, shared safely between processes.
//
// Layout (all directories mode 0700):
//
//	<root>/
//	  root.lock          flock taken to create, remove or reap VM directories
//	  vms/<name>/
//	    lock             flock held by the VM's owner for the VM's whole life
//	    id               random token of this incarnation of the directory
//	    state.json       written atomically (temp file, fsync, rename)
//	    api.sock  firecracker.log  metrics.json  serial.log  serial.in  stderr.log
//	    config.json  metadata.json  vsock.sock  drives/<id>.img
//
// A VM is alive while the pid recorded in its state.json runs with the recorded start time.
// Reap removes the directory of every VM that is not alive and whose lock nobody holds.
package rundir
