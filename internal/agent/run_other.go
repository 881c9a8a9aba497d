//go:build !linux

package agent

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// reaper exists on Linux only.
type reaper struct{ pid1 bool }

func (s *Server) exec(context.Context, *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.ErrUnsupported)
}

// mainProc exists on Linux only.
type mainProc struct{}

func (s *Server) mainCall(context.Context, *connect.BidiStream[agentwire.ExecIn, agentwire.ExecOut]) error {
	return connect.NewError(connect.CodeUnimplemented, errors.ErrUnsupported)
}

// Run fails: the agent runs in Linux guests only.
func Run(context.Context, Config) error {
	return errors.ErrUnsupported
}
