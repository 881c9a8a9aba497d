//go:build !linux

package netdev

import "context"

// Setup needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func Setup(ctx context.Context, cfg Config, opts ...Option) (*Network, error) {
	return nil, errUnsupported
}

// Teardown needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func (n *Network) Teardown(ctx context.Context, opts ...Option) error {
	if n == nil {
		return nil
	}
	return errUnsupported
}

// Reclaim needs Linux; elsewhere it returns an error wrapping errors.ErrUnsupported.
func Reclaim(ctx context.Context, dir string, alive func(owner string) bool, opts ...Option) error {
	return errUnsupported
}
