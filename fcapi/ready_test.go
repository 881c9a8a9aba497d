//go:build linux

package fcapi

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// bindOnly creates the socket file the way Firecracker's bind does, without listening on it,
// which is the window in which connect fails with ECONNREFUSED.
func bindOnly(t *testing.T, path string) (closeFn func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	closed := false
	closeFn = func() {
		if !closed {
			closed = true
			syscall.Close(fd)
			syscall.Unlink(path)
		}
	}
	t.Cleanup(closeFn)
	return closeFn
}

func TestWaitReadyBoundNotListening(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	bindOnly(t, sock)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := WaitReady(ctx, sock, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a timeout", err)
	}
	if !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), sock) {
		t.Errorf("the error does not give the last failure and the socket: %v", err)
	}
}

func TestWaitReadyRace(t *testing.T) {
	// The file exists but nobody listens yet; then a server takes over the path.
	sock := filepath.Join(shortDir(t), "api.sock")
	unbind := bindOnly(t, sock)
	done := make(chan error, 1)
	go func() { done <- WaitReady(t.Context(), sock, nil) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("WaitReady returned before anyone listened: %v", err)
	default:
	}
	unbind()
	api := newFakeAPIAt(t, sock, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rs := api.requests(); len(rs) != 1 || rs[0].Path != "/" {
		t.Errorf("requests: %s", paths(rs))
	}
}

func TestWaitReadyUntil200(t *testing.T) {
	var n atomic.Int32
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 4 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		cannedAnswers(w, r)
	})
	if err := WaitReady(t.Context(), api.sock, nil); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 4 {
		t.Errorf("asked %d times, want 4", got)
	}
}

func TestWaitReadyMissingFile(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := WaitReady(ctx, sock, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("got %v", err)
	}
}

func TestWaitReadyProcessExited(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	bindOnly(t, sock)
	exited := make(chan struct{})
	time.AfterFunc(30*time.Millisecond, func() { close(exited) })
	start := time.Now()
	err := WaitReady(t.Context(), sock, exited)
	if !errors.Is(err, ErrProcessExited) {
		t.Fatalf("got %v, want ErrProcessExited", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %v", d)
	}

	// Already exited: no attempt at all, even with a server that would answer.
	api := newFakeAPI(t, nil)
	if err := WaitReady(t.Context(), api.sock, exited); !errors.Is(err, ErrProcessExited) {
		t.Errorf("closed channel: got %v", err)
	}
	if n := len(api.requests()); n != 0 {
		t.Errorf("%d requests sent after the process exited", n)
	}
}

func TestWaitReadyExitDuringHangingRequest(t *testing.T) {
	// The socket accepts but never answers, as a stopped process would.
	api := newFakeAPI(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	exited := make(chan struct{})
	time.AfterFunc(30*time.Millisecond, func() { close(exited) })
	if err := WaitReady(t.Context(), api.sock, exited); !errors.Is(err, ErrProcessExited) {
		t.Errorf("got %v, want ErrProcessExited", err)
	}
}

// TestReadyPollSchedule: every 100 µs for the first 20 ms, then doubling up to 50 ms.
func TestReadyPollSchedule(t *testing.T) {
	var got []time.Duration
	wait, elapsed := readyPollMin, time.Duration(0)
	for elapsed < 500*time.Millisecond {
		got = append(got, wait)
		elapsed += wait
		wait = nextReadyPoll(wait, elapsed)
	}
	fast := int(readyPollFast / readyPollMin)
	for i, w := range got[:fast] {
		if w != 100*time.Microsecond {
			t.Fatalf("pause %d is %v during the fast phase, want 100µs", i, w)
		}
	}
	for i := fast + 1; i < len(got); i++ {
		if want := min(2*got[i-1], 50*time.Millisecond); got[i] != want {
			t.Fatalf("pause %d is %v after %v, want %v", i, got[i], got[i-1], want)
		}
	}
	if got[len(got)-1] != 50*time.Millisecond {
		t.Errorf("last pause %v, want the 50ms cap", got[len(got)-1])
	}
}

func TestWaitListening(t *testing.T) {
	// Like TestWaitReadyRace, but nothing is sent: the server sees no request.
	sock := filepath.Join(shortDir(t), "api.sock")
	unbind := bindOnly(t, sock)
	done := make(chan error, 1)
	go func() { done <- WaitListening(t.Context(), sock, nil) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("WaitListening returned before anyone listened: %v", err)
	default:
	}
	unbind()
	api := newFakeAPIAt(t, sock, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rs := api.requests(); len(rs) != 0 {
		t.Errorf("WaitListening sent requests: %s", paths(rs))
	}

	// It gives up like WaitReady: at once when the process exits.
	sock2 := filepath.Join(shortDir(t), "api2.sock")
	bindOnly(t, sock2)
	exited := make(chan struct{})
	close(exited)
	if err := WaitListening(t.Context(), sock2, exited); !errors.Is(err, ErrProcessExited) {
		t.Fatalf("with the process gone: %v, want ErrProcessExited", err)
	}
}
