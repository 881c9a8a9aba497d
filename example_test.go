package smartvm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/baseimage"
	"github.com/smartvm/smartvm/netdev"
)

// Start a VM from a kernel and a root filesystem, print its console, and stop it.
func ExampleManager_Start() {
	mgr, err := smartvm.NewManager(smartvm.WithFirecrackerBinary("/usr/local/bin/firecracker"))
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close() // stops every VM the manager started

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := mgr.Start(ctx, smartvm.MachineSpec{
		Name:      "web",
		Kernel:    "/var/lib/images/vmlinux",
		VCPUs:     2,
		MemoryMiB: 1024,
		Drives: []smartvm.DriveSpec{
			// Ephemeral by default: the VM writes to a private copy, deleted with it.
			{Path: "/var/lib/images/rootfs.ext4", Root: true},
			// Persistent: used in place and kept.
			{ID: "data", Path: "/var/lib/web/data.ext4", Persistent: true},
		},
	})
	var se *smartvm.StartError
	if errors.As(err, &se) {
		log.Fatalf("step %s failed: %v", se.Step, err) // the log tail is in the message
	}
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	console, err := m.Console()
	if err != nil {
		log.Fatal(err)
	}
	go io.Copy(os.Stdout, console)

	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	if err := m.Stop(stopCtx); err != nil { // Ctrl-Alt-Del, then SIGTERM, then SIGKILL
		log.Print(err)
	}
	var exit *smartvm.ExitError
	if err := m.Wait(stopCtx); errors.As(err, &exit) {
		log.Printf("firecracker ended: %v", exit)
	}
}

// Boot a base image from Firecracker's CI bucket instead of naming a kernel and rootfs.
func ExampleManager_Start_baseImage() {
	images, err := baseimage.New(baseimage.Options{}) // cache in /tmp/.smartvm/base-images
	if err != nil {
		log.Fatal(err)
	}
	mgr, err := smartvm.NewManager(smartvm.WithBaseImages(images))
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	m, err := mgr.Start(context.Background(), smartvm.MachineSpec{BaseImagePreset: "latest"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Name(), m.Info().BaseImage)
}

// Boot a base image with a network: a TAP device with a /30 of 172.16.0.0/16, NAT to the
// outside, and the bundle's SSH key to log in. Needs root (or CAP_NET_ADMIN).
func ExampleManager_Start_network() {
	images, err := baseimage.New(baseimage.Options{})
	if err != nil {
		log.Fatal(err)
	}
	mgr, err := smartvm.NewManager(smartvm.WithBaseImages(images))
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	m, err := mgr.Start(context.Background(), smartvm.MachineSpec{
		BaseImagePreset: "latest",
		Network:         &smartvm.NetworkSpec{NAT: true},
	})
	if errors.Is(err, netdev.ErrPermission) {
		log.Fatal(err) // says which capability is missing and how to grant it
	}
	if err != nil {
		log.Fatal(err)
	}
	info := m.Info()
	fmt.Printf("ssh -i %s root@%s\n", info.SSHKey, info.GuestIP)
}

// Type into the guest's serial console.
func ExampleMachine_ConsoleInput() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	m, err := mgr.Start(context.Background(), smartvm.MachineSpec{Kernel: "vmlinux", SerialInput: true})
	if err != nil {
		log.Fatal(err)
	}
	in, err := m.ConsoleInput()
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	io.WriteString(in, "root\n")
}

// Start a VM that outlives this process, and adopt it later from another one.
func ExampleManager_Attach() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if _, err := mgr.Start(ctx, smartvm.MachineSpec{Name: "batch", Kernel: "vmlinux"}, smartvm.Detached()); err != nil {
		log.Fatal(err)
	}

	// Later, in another process:
	m, err := mgr.Attach(ctx, "batch")
	if errors.Is(err, smartvm.ErrNotFound) {
		log.Fatal("batch is not running")
	}
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	m.Release() // stop watching; the VM keeps running
}

// List the VMs of the runtime root, across processes.
func ExampleManager_List() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	infos, err := mgr.List(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, vm := range infos {
		fmt.Println(vm.Name, vm.State, vm.PID, vm.Uptime(time.Now()).Round(time.Second))
	}
}

// Stop the manager's VMs when the program is interrupted.
func ExampleManager_HandleSignals() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	stop := mgr.HandleSignals()
	defer stop()
	// ... start VMs and wait for them ...
}

func ExampleMachineSpec_WithDefaults() {
	s := smartvm.MachineSpec{
		Kernel: "vmlinux",
		Drives: []smartvm.DriveSpec{{Path: "rootfs.ext4", Root: true}, {Path: "scratch.img"}},
	}.WithDefaults()
	fmt.Println(s.BootArgs)
	fmt.Println(s.VCPUs, s.MemoryMiB, s.BootMode, s.LogLevel)
	for _, d := range s.Drives {
		fmt.Println(d.ID, d.Path, d.Ephemeral())
	}
	// Output:
	// console=ttyS0 reboot=k panic=1
	// 1 512 api Info
	// rootfs rootfs.ext4 true
	// drive1 scratch.img true
}

func ExampleMachineSpec_Validate() {
	s := smartvm.MachineSpec{
		Name:   "web_1",
		Kernel: "/nonexistent/vmlinux",
		VCPUs:  64,
		Drives: []smartvm.DriveSpec{
			{ID: "root-fs", Path: "/nonexistent/a.ext4", Root: true, ReadOnly: true},
			{Path: "/nonexistent/b.ext4", Root: true, ReadOnly: true},
		},
	}
	fmt.Println(s.Validate())
	// Output:
	// name "web_1": use 1 to 64 ASCII letters, digits or '-'
	// kernel: stat /nonexistent/vmlinux: no such file or directory
	// vcpus 64: use 1 to 32
	// drive "root-fs": use ASCII letters, digits and '_' for IDs (Firecracker refuses others)
	// drive "root-fs": stat /nonexistent/a.ext4: no such file or directory
	// drive "rootfs": a second root drive; only one drive can be the root device
	// drive "rootfs": stat /nonexistent/b.ext4: no such file or directory
}

// Talk to a program listening on vsock port 1024 in the guest, and accept the connections
// guest programs make to the host's port 1025.
func ExampleMachine_DialVsock() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cid, err := mgr.FreeVsockCID(ctx)
	if err != nil {
		log.Fatal(err)
	}
	m, err := mgr.Start(ctx, smartvm.MachineSpec{
		BaseImagePreset: "latest",
		Vsock:           &smartvm.VsockSpec{CID: cid}, // its socket in the VM's directory
	})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	// DialVsock retries until the guest program listens, or ctx ends.
	conn, err := m.DialVsock(ctx, 1024)
	switch {
	case errors.Is(err, smartvm.ErrNoVsockListener):
		log.Fatal(err) // "... nobody listened on port 1024 in the guest ..."
	case err != nil:
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintln(conn, "hello, guest")

	ln, err := m.ListenVsock(1025) // closed when the VM ends
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	from, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(os.Stdout, from)
}

// Start the main process of a VM whose init is the guest agent (as an OCI image's is), with
// docker-run-style overrides and this program's stdio, and report its exit code.
func ExampleMachine_MainCommand() {
	mgr, err := smartvm.NewManager()
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cid, err := mgr.FreeVsockCID(ctx)
	if err != nil {
		log.Fatal(err)
	}
	m, err := mgr.Start(ctx, smartvm.MachineSpec{
		Kernel:    "vmlinux",
		BootArgs:  "console=ttyS0 reboot=k panic=1 init=/sbin/smartvm-agent",
		Drives:    []smartvm.DriveSpec{{Path: "rootfs.ext4", Root: true}}, // holds /etc/smartvm/init.json
		Vsock:     &smartvm.VsockSpec{CID: cid},
		AgentMain: true, // the agent waits for MainCommand
	})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	c := m.MainCommand(context.Background(), "cat", "/etc/os-release") // replaces the image's Cmd
	c.Env, c.Dir = []string{"DEBUG=1"}, "/"
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = c.Run() // the VM powers off once it ends
	var ee *smartvm.CommandExitError
	switch {
	case errors.As(err, &ee):
		fmt.Println("the main process exited with code", ee.Code)
	case err != nil:
		log.Fatal(err)
	}
}
