package fcapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Poll intervals of WaitReady: it starts fast, as Firecracker usually listens within
// milliseconds, and backs off.
const (
	readyPollMin = time.Millisecond
	readyPollMax = 50 * time.Millisecond
)

// WaitReady waits until the Firecracker API at socketPath answers GET / with 200. The socket
// file appears before Firecracker listens on it, so a file that exists is not enough: WaitReady
// connects and asks, again and again, until an answer comes, ctx ends, or exited (which may be
// nil) is closed. It returns an error wrapping ErrProcessExited at once when exited is closed,
// and one wrapping ctx.Err() and the last failure when ctx ends first.
func WaitReady(ctx context.Context, socketPath string, exited <-chan struct{}) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if exited != nil {
		go func() {
			select {
			case <-exited:
				cancel(ErrProcessExited)
			case <-ctx.Done():
			}
		}()
	}
	c := New(socketPath, WithRequestTimeout(0))
	defer c.Close()
	wait := readyPollMin
	var last error
	for {
		select {
		case <-exited:
			return fmt.Errorf("wait for the Firecracker API at %s: %w", socketPath, ErrProcessExited)
		default:
		}
		err := c.do(ctx, request{method: http.MethodGet, path: "/"})
		if err == nil {
			return nil
		}
		if ctx.Err() == nil {
			last = err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			cause := context.Cause(ctx)
			if errors.Is(cause, ErrProcessExited) {
				return fmt.Errorf("wait for the Firecracker API at %s: %w", socketPath, cause)
			}
			if last == nil {
				return fmt.Errorf("wait for the Firecracker API at %s: %w", socketPath, cause)
			}
			return fmt.Errorf("wait for the Firecracker API at %s: %w (last attempt: %w)", socketPath, cause, last)
		case <-t.C:
		}
		wait = min(2*wait, readyPollMax)
	}
}
