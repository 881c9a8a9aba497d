package netdev

import (
	"errors"
	"io/fs"
)

// Sentinel errors. Check them with errors.Is; the errors returned wrap them and add the noun
// (which device, which file) and what to do about it.
var (
	// ErrExists: a network device, namespace or network record with the wanted name already
	// exists. netdev never takes over or changes something it did not create; remove the
	// leftover (after checking what it is) or pick another name.
	ErrExists = errors.New("already exists")

	// ErrPermission: the process lacks CAP_NET_ADMIN (or, for per-VM namespaces,
	// CAP_SYS_ADMIN). It also matches fs.ErrPermission.
	ErrPermission error = permissionError{}

	// ErrNoTUN: /dev/net/tun is missing, so no TAP device can be created.
	ErrNoTUN = errors.New("/dev/net/tun not available")

	// ErrPoolExhausted: every /30 of the address pool is leased.
	ErrPoolExhausted = errors.New("address pool exhausted")

	// ErrUplinkNotFound: the uplink device for NAT does not exist, or there is no IPv4 default
	// route to detect it from.
	ErrUplinkNotFound = errors.New("uplink not found")

	// ErrNotOwned: the device exists but smartvm did not create it, so netdev leaves it alone.
	ErrNotOwned = errors.New("not created by smartvm")
)

// permissionError is ErrPermission: one error that matches both itself and fs.ErrPermission,
// so messages say "permission denied" once.
type permissionError struct{}

func (permissionError) Error() string        { return "permission denied" }
func (permissionError) Is(target error) bool { return target == fs.ErrPermission }
