package netdev

import (
	"net/netip"
	"os"
	"sync"
)

// TAPOptions configures CreateTAP. The zero value makes a TAP with the kernel's defaults.
type TAPOptions struct {
	// MTU of the device. Zero keeps the kernel's default, 1500.
	MTU int

	// UID and GID may open the TAP without CAP_NET_ADMIN (a non-root Firecracker's uid and
	// gid). Zero leaves them unset: only processes with CAP_NET_ADMIN may open it.
	UID, GID int

	// Addr is the host's address on the TAP, with its prefix length (172.16.0.1/30). The zero
	// Prefix assigns none.
	Addr netip.Prefix

	// Tag is appended to the device's alias, "smartvm <Tag>", which marks it as created by
	// smartvm. Empty leaves the alias "smartvm".
	Tag string
}

// TAP is a TAP device created by CreateTAP. It is persistent: it exists until Close or
// DeleteTAP deletes it, whether or not the process that made it still runs.
type TAP struct {
	// Name is the device's name, Firecracker's host_dev_name.
	Name string
	// Index is the device's interface index.
	Index int

	alias string
	mu    sync.Mutex
	ns    *os.File // the namespace the device lives in; nil once closed
}

func tapAlias(tag string) string {
	if tag == "" {
		return aliasMark
	}
	return aliasMark + " " + tag
}
