//go:build unix

package fakefc

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// boundSocket is a Unix socket bound to its path but not yet listening: the socket file
// exists, and connecting to it is refused, as between Firecracker's bind() and listen().
type boundSocket struct {
	fd   int
	path string
}

func bindUnix(path string) (*boundSocket, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, fmt.Errorf("create socket: %w", err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		_ = syscall.Close(fd)
		return nil, err
	}
	return &boundSocket{fd: fd, path: path}, nil
}

// listen starts accepting connections and returns the listener.
func (b *boundSocket) listen() (net.Listener, error) {
	if err := syscall.Listen(b.fd, 128); err != nil {
		_ = syscall.Close(b.fd)
		return nil, fmt.Errorf("listen on %s: %w", b.path, err)
	}
	f := os.NewFile(uintptr(b.fd), b.path)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", b.path, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	return ln, nil
}

func (b *boundSocket) close() { _ = syscall.Close(b.fd) }
