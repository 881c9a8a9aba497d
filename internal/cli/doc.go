// Package cli is the smartvm command line. Each subcommand lives in its own file and turns
// flags into calls of the smartvm library; the package holds no VM logic of its own.
//
// Run is the whole program: cmd/smartvm's main only adds signal handling and os.Exit. Run prints
// errors once on stderr as "smartvm: <message>" and returns ExitOK, ExitError or ExitUsage
// (ssh returns the exit code of the ssh client it runs).
//
// The CLI is the only part of smartvm that reads the environment. Flags win over the
// environment, the environment over defaults:
//
//	SMARTVM_FIRECRACKER_BIN            --firecracker-bin
//	SMARTVM_RUNTIME_DIR                --runtime-dir
//	SMARTVM_STAGING_DIR                --staging-dir
//	SMARTVM_BASE_IMAGE_DIR             the base image cache
//	SMARTVM_CI_BUCKET_URL              the Firecracker CI bucket the presets list
//	SMARTVM_BASE_IMAGE_PRESET          the default preset (latest or lts)
//	SMARTVM_BASE_IMAGE_MANIFEST_URL    a default manifest URL instead of a preset
//	SMARTVM_BASE_IMAGE_MANIFEST_PATH   a default manifest file instead of a preset
//	SMARTVM_FIRECRACKER_RELEASE_URL    the release site setup downloads from
//	HTTPS_PROXY, HTTP_PROXY, NO_PROXY  proxies for every download (and lower-case forms)
//
// Firecracker is looked up in this order: --firecracker-bin, $SMARTVM_FIRECRACKER_BIN,
// ~/.smartvm/bin/firecracker (where setup installs it), then PATH. run installs the latest
// release there when none is found, unless --no-install is given.
//
// A foreground run connects the guest's serial console to stdio: the guest's output to stdout,
// stdin to the guest's serial input (MachineSpec.SerialInput), with the terminal in raw mode
// when stdin is one, restored however run ends. Ctrl-] then q (no Enter needed), SIGINT or
// SIGTERM stop the VM gracefully, with the grace period stop uses
// (smartvm.DefaultStopGracePeriod), and the exit code is 0 when the guest ended or was stopped,
// 1 when Firecracker failed. attach does the same for a running VM, where the escape detaches
// and leaves it running.
//
// run --net gives the VM one NIC with NAT (--no-nat: without; --uplink: through that
// device), --nics N several, --net-namespace puts it in a network namespace of its own and
// --net-ip-arg adds the kernel's ip= argument; they imply --net, while --no-nat without --net
// is a usage error. run -f reads a MachineSpec from a JSON file, which the flags given
// override. ps and inspect show the guest's
// address, and ssh runs the system's ssh client against it with the base image's key.
//
// run --vsock adds a vsock device with Manager.FreeVsockCID's CID (picked at start, in the
// supervisor for run -d) and the default socket in the VM's directory; inspect shows it as
// vsock_socket (MachineInfo.VsockSocket).
//
// snapshot NAME DIR saves a running VM with Machine.Snapshot (with --stop it keeps the VM
// paused and kills it afterwards, so it never runs past its snapshot); restore DIR starts it
// again with Manager.Restore, in the foreground like run or detached like run --detach;
// restore --name NAME restores it as a clone under another name (RestoreSpec.Name). clone DIR
// --count N starts N clones with Manager.Clone and prints their names, or with --detach starts
// one supervisor per clone concurrently (a name that turns out taken is retried with the
// next number) and kills those that started if one fails.
//
// run --detach (and restore --detach) re-executes smartvm as "smartvm __supervise" in a
// session of its own (stdio on /dev/null): it reads its request (the MachineSpec, or the
// snapshot to restore, and settings) on stdin, starts the VM in the library's owned mode, so
// Firecracker dies with it, reports the VM's name or the start error as one JSON line on file
// descriptor 3, and waits until the VM ends, when the library removes the VM's files. From
// then on its stderr (its log, at the --log-level run was given, and any crash report) goes to
// supervisor.log in the VM's directory. SIGTERM makes it stop the VM. The other VM commands
// adopt VMs through the library (Manager.Attach), which reaps dead VMs first.
//
// For scripts: ps -q, ps --filter, and --format Go templates on ps, inspect and images ls
// (over the objects --json prints); inspect with several names prints a JSON array.
package cli
