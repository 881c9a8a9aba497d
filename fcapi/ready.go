package fcapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Poll intervals of WaitReady. Firecracker usually listens within a few milliseconds of its
// start, and each millisecond until the socket is seen adds to a boot's latency, so WaitReady
// tries every readyPollMin during readyPollFast, then backs off, doubling the pause up to
// readyPollMax. Until the socket accepts, an attempt is a bare connect, which costs a few
// microseconds of CPU.
const (
	readyPollMin  = 100 * time.Microsecond
	readyPollFast = 20 * time.Millisecond
	readyPollMax  = 50 * time.Millisecond
)

// WaitReady waits until the Firecracker API at socketPath answers GET / with 200. The socket
// file appears before Firecracker listens on it, so a file that exists is not enough: WaitReady
// connects and asks, again and again, until an answer comes, ctx ends, or exited (which may be
// nil) is closed. It returns an error wrapping ErrProcessExited at once when exited is closed,
// and one wrapping ctx.Err() and the last failure when ctx ends first.
func WaitReady(ctx context.Context, socketPath string, exited <-chan struct{}) error {
	c := New(socketPath, WithRequestTimeout(0))
	defer c.Close()
	return waitSocket(ctx, socketPath, exited, func(ctx context.Context) error {
		return c.do(ctx, request{method: http.MethodGet, path: "/"})
	})
}

// WaitListening waits until the socket at socketPath accepts connections: Firecracker has
// called listen, so a request sent now is queued and served once its API thread runs. It
// sends no request, which makes it the quickest way to start configuring a fresh process:
// the first configuration request then doubles as the readiness check. Its errors are
// WaitReady's.
func WaitListening(ctx context.Context, socketPath string, exited <-chan struct{}) error {
	return waitSocket(ctx, socketPath, exited, nil)
}

// waitSocket connects to socketPath until it accepts and probe (when not nil) succeeds.
func waitSocket(ctx context.Context, socketPath string, exited <-chan struct{}, probe func(context.Context) error) error {
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
	begin := time.Now()
	wait := readyPollMin
	var last error
	var d net.Dialer
	for {
		select {
		case <-exited:
			return fmt.Errorf("wait for the Firecracker API at %s: %w", socketPath, ErrProcessExited)
		default:
		}
		// A bare connect first: cheaper than a request while nothing listens yet.
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			conn.Close()
			if probe == nil {
				return nil
			}
			if err = probe(ctx); err == nil {
				return nil
			}
		}
		// An attempt cut short by ctx (its deadline may pass before ctx.Err says so) tells
		// nothing about the socket.
		if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
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
		wait = nextReadyPoll(wait, time.Since(begin))
	}
}

// nextReadyPoll returns the pause after one of wait, elapsed into the wait for readiness.
func nextReadyPoll(wait, elapsed time.Duration) time.Duration {
	if elapsed < readyPollFast {
		return readyPollMin
	}
	return min(2*wait, readyPollMax)
}
