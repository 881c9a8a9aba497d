package smartvm

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// HandleSignals is an opt-in helper for programs whose VMs must not outlive an interrupt:
// on the first SIGINT or SIGTERM it closes the manager, which stops every VM it owns
// (Ctrl-Alt-Del, then SIGTERM, then SIGKILL, within the stop grace period) and removes what
// they left; VMs started Detached keep running. A second signal meanwhile kills them at
// once. Then it stops handling the signals and sends the first one to this process again,
// so the program ends as it would have without the handler (or its own handlers run).
//
// The library installs no signal handler unless this is called. The returned function
// removes the handler (when no signal has arrived yet); it is safe to call more than once.
func (mgr *Manager) HandleSignals() (stop func()) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	quit := make(chan struct{})
	go func() {
		var sig os.Signal
		select {
		case sig = <-ch:
		case <-quit:
			return
		}
		mgr.log.Info("signal received; stopping vms", "signal", sig.String())
		closed := make(chan struct{})
		go func() {
			select {
			case <-ch:
				mgr.log.Info("second signal; killing vms")
				mgr.killAll()
			case <-closed:
			}
		}()
		if err := mgr.Close(); err != nil {
			mgr.log.Warn("stop vms on signal", "err", err)
		}
		close(closed)
		signal.Stop(ch)
		if s, ok := sig.(syscall.Signal); ok {
			syscall.Kill(os.Getpid(), s)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(quit)
		})
	}
}
