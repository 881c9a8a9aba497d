//go:build !unix

package fakefc

import (
	"errors"
	"fmt"
	"net"
)

type boundSocket struct{}

func bindUnix(path string) (*boundSocket, error) {
	return nil, fmt.Errorf("bind %s: the fake firecracker needs Unix sockets: %w", path, errors.ErrUnsupported)
}

func (b *boundSocket) listen() (net.Listener, error) { return nil, errors.ErrUnsupported }

func (b *boundSocket) close() {}
