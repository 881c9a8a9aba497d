package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// announcer keeps a connection to the host (agentwire.HostPort over vsock): it says the agent is ready,
// takes the host's clock, and, when the connection is reset by a snapshot, makes the vsock
// listener start over and connects again.
type announcer struct {
	dial func() (net.Conn, error)
	// syncClock sets the guest's clock from the host's answers: only over vsock, in a guest.
	// Over a socket (tests, guests without vsock) the host may be this machine.
	syncClock bool
	log       *slog.Logger
	pid1      bool
	onReset   func()
	events    chan agentwire.Hello
	acked     chan struct{} // buffered: the host answered the exit event
}

func (a *announcer) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := a.dial()
		if err != nil {
			// Nobody listens on the host (yet): try again, slowly.
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		err = a.session(ctx, conn)
		conn.Close()
		if errors.Is(err, syscall.ECONNRESET) {
			a.log.Info("vsock transport reset (snapshot or restore): listening again")
			a.onReset()
		}
	}
}

// session says hello on conn, sets the clock from each answer and sends events, until the
// connection ends. The host answers every line in order, so the answer to an exit event is
// the one whose number is the event's: only that one acknowledges it (an answer to the hello
// before it must not).
func (a *announcer) session(ctx context.Context, conn net.Conn) error {
	enc := json.NewEncoder(conn)
	answers := make(chan error, 1)
	var got atomic.Int64
	answered := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var ts agentwire.TimeSync
			if err := json.Unmarshal(sc.Bytes(), &ts); err != nil {
				answers <- err
				return
			}
			a.setClock(ts)
			got.Add(1)
			select {
			case answered <- struct{}{}:
			default:
			}
		}
		answers <- sc.Err()
	}()
	if err := enc.Encode(agentwire.Hello{Event: "ready", Version: version(), PID1: a.pid1}); err != nil {
		return err
	}
	sent, exitLine := int64(1), int64(0)
	for {
		if exitLine > 0 && got.Load() >= exitLine {
			exitLine = 0
			select {
			case a.acked <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-answers:
			return err
		case <-answered:
		case ev := <-a.events:
			if err := enc.Encode(ev); err != nil {
				a.events <- ev // for the next connection
				return err
			}
			sent++
			if ev.Event == "exit" {
				exitLine = sent
			}
		}
	}
}

func (a *announcer) setClock(ts agentwire.TimeSync) {
	if !a.syncClock || ts.UnixNano == 0 {
		return
	}
	t := unix.NsecToTimespec(ts.UnixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &t); err != nil {
		a.log.Debug("set the clock from the host", "err", err)
		return
	}
	a.log.Debug("clock set from the host", "time", time.Unix(0, ts.UnixNano))
}

// report tells the host how the entrypoint ended and waits a little for its answer.
func (a *announcer) report(code int) {
	a.events <- agentwire.Hello{Event: "exit", Code: &code}
	select {
	case <-a.acked:
	case <-time.After(2 * time.Second):
		a.log.Warn("the host did not acknowledge the exit code")
	}
}
