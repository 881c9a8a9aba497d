package netdev_test

import (
	"context"
	"fmt"
	"log"
	"os/exec"

	"github.com/smartvm/smartvm/netdev"
)

// A VM's network from start to end: set it up, start Firecracker with its NICs (inside the
// VM's namespace), and tear it down when Firecracker has exited.
func ExampleSetup() {
	ctx := context.Background()
	n, err := netdev.Setup(ctx, netdev.Config{
		Owner: "web-1",
		Dir:   "/dev/shm/.smartvm/runtime/net",
		NAT:   true,
		Netns: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer n.Teardown(ctx)

	for _, nic := range n.NICs {
		// PUT /network-interfaces/{iface_id}, or the config file's "network-interfaces".
		fmt.Println(nic.ID, nic.TAP, nic.MAC)
	}
	cmd := exec.Command("firecracker", "--api-sock", "/run/web-1.sock")
	if err := netdev.InNetns(n.Netns.Path, cmd.Start); err != nil {
		log.Fatal(err)
	}
	cmd.Wait()
	fmt.Println("ssh root@" + n.GuestAddr().String())
}

// After a crash, the networks of VMs that are gone are removed.
func ExampleReclaim() {
	alive := func(vm string) bool { return false } // ask the runtime directory
	if err := netdev.Reclaim(context.Background(), "/dev/shm/.smartvm/runtime/net", alive); err != nil {
		log.Fatal(err)
	}
}
