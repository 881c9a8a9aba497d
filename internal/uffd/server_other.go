//go:build !linux

package uffd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
)

// Options configure a Server.
type Options struct {
	Log      *slog.Logger
	Prefault []int64
}

// Server is a userfaultfd page server; userfaultfd exists only on Linux.
type Server struct{}

// Open returns an error wrapping errors.ErrUnsupported: userfaultfd is Linux only.
func Open(f *os.File, opts Options) (*Server, error) {
	f.Close()
	return nil, fmt.Errorf("uffd server: %w", errors.ErrUnsupported)
}

func (s *Server) Clients() int                                    { return 0 }
func (s *Server) WorkingSet() []int64                             { return nil }
func (s *Server) Accept(context.Context, *net.UnixListener) error { return errors.ErrUnsupported }
func (s *Server) Serve(*net.UnixConn) error                       { return errors.ErrUnsupported }
func (s *Server) Close() error                                    { return nil }
