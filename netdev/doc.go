// Package netdev builds and removes the host side of a Firecracker microVM's network: TAP
// devices, their addresses, NAT to the outside and, optionally, a network namespace per VM. It
// is the only smartvm package that talks netlink or nftables, and it imports nothing else from
// smartvm, so it can be used on its own.
//
// # Addressing
//
// Each NIC gets a /30 leased from a Pool (DefaultPool, 172.16.0.0/16, unless configured): the
// host end (the first address) on the TAP, the guest the second, and the guest MAC
// 06:00:<the guest's four address bytes> (GuestMAC). The fcnet service of Firecracker's CI
// images reads that MAC and configures the guest with no kernel argument; fcnet adds no
// default route, so a guest that should reach the outside needs
// `ip route add default via <host end>`. Guests without fcnet can be given the kernel ip=
// argument instead (Config.KernelIPArg, KernelIPArg), which sets the route too. Leases are
// files in the state directory, guarded by a file lock, so concurrent processes never hand out
// the same /30; /30s that hold an address of the host are skipped.
//
// # Lifecycle
//
// Setup builds one VM's network from a Config and returns a Network: plain JSON-ready data with
// what Firecracker needs per NIC (NIC.ID, NIC.TAP and NIC.MAC are iface_id, host_dev_name and
// guest_mac) and what Network.Teardown needs to remove it all. Start Firecracker after Setup;
// with Config.Netns, start it inside the VM's namespace (InNetns on the thread that spawns it),
// since Firecracker finds its TAP by name in its own namespace. Call Teardown after
// Firecracker has exited.
//
// What Setup creates outlives the process: TAPs are persistent, the namespace is bind-mounted,
// NAT rules stay in the kernel. Setup writes a record under the state directory before it
// creates anything, and Teardown removes the record last, so after a crash Reclaim finds and
// removes the networks of VMs that are no longer alive, and releases their leases. Every device
// netdev creates is named with Prefix ("smv") and carries the alias "smartvm <vm>"; netdev never
// changes or deletes a device without that alias.
//
// Setup, Teardown, Reclaim, CreateTAP and DeleteTAP work relative to the network namespace of
// the calling thread: the host's in an ordinary program. A caller (a test, say) that wants them
// to work elsewhere locks its goroutine to a thread that entered that namespace, or calls them
// from InNetns.
//
// # NAT and namespaces
//
// With Config.NAT, traffic from the VM's subnets leaving through the uplink (Config.Uplink, or
// the device of the IPv4 default route) is masqueraded, and IPv4 forwarding is turned on in the
// host namespace; it is left on afterwards, since other software may rely on it by then. The
// rules live in the nftables table "smartvm" (TableName), one rule per VM subnet tagged with the
// VM's name, so the table's rules count its users: the table is created with the first and
// deleted with the last. netdev changes no other table; a firewall whose own forward chain drops
// forwarded traffic (a drop policy, as Docker sets) must be told to accept the VM's.
//
// With Config.Netns, the TAPs live in a namespace of the VM's own, "smv-<vm>", bind-mounted in
// DefaultNetnsDir like `ip netns add` does, so `ip netns exec smv-<vm> …` works. A veth pair
// joins it to the host, with a /30 of its own; inside, the guests' traffic is masqueraded to the
// namespace's veth address, and traffic the host sends to that address is forwarded to the first
// NIC's guest (Network.GuestAddr). Clones restored from one snapshot keep its TAP name and guest
// address (NICConfig.TAP, NICConfig.GuestIP) without colliding, each in its namespace.
//
// # Errors
//
// Errors wrap the sentinels ErrPermission (no CAP_NET_ADMIN, or CAP_SYS_ADMIN for namespaces;
// the message says how to grant them), ErrNoTUN, ErrPoolExhausted, ErrUplinkNotFound, ErrExists
// and ErrNotOwned, and add which device or file and what to do. When a step of Setup fails,
// what it built is removed again in reverse order. On systems other than Linux everything that
// touches the network returns an error wrapping errors.ErrUnsupported; names, MACs, the pool and
// the types work everywhere.
package netdev
