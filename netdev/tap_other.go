//go:build !linux

package netdev

import (
	"errors"
	"fmt"
)

// errUnsupported is returned by everything that needs Linux networking.
var errUnsupported = fmt.Errorf("netdev: TAP devices, namespaces and nftables need Linux: %w", errors.ErrUnsupported)

// CreateTAP needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func CreateTAP(name string, opts TAPOptions) (*TAP, error) { return nil, errUnsupported }

// Close needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func (t *TAP) Close() error {
	if t == nil {
		return nil
	}
	return errUnsupported
}

// DeleteTAP needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func DeleteTAP(name string) error { return errUnsupported }

// InNetns needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func InNetns(path string, fn func() error) error { return errUnsupported }
