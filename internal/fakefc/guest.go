package fakefc

import (
	"io"
	"strings"
	"sync"
	"time"

	"github.com/smartvm/smartvm/internal/testguest"
)

// tickInterval is how often the counter guest prints a tick.
const tickInterval = 5 * time.Millisecond

// guestSpec says what the fake boots: the project's test guest (recognised in the kernel
// image) runs the mode its command line names; any other kernel behaves as a Linux guest.
type guestSpec struct {
	testGuest bool
	cmdline   string
}

// guestState is what a snapshot keeps of the guest.
type guestState struct {
	Tick       uint64 `json:"tick"`
	CADPending bool   `json:"cad_pending"`
	Halted     bool   `json:"halted"`
	// VsockUp: the vsock-echo guest's driver is up. VsockCalledBack: its call to the host
	// is established (it does not call again after a restore then).
	VsockUp         bool `json:"vsock_up,omitempty"`
	VsockCalledBack bool `json:"vsock_called_back,omitempty"`
}

// guest emulates the guest's behaviour on the serial console and the i8042 (Ctrl-Alt-Del):
// see the package documentation.
type guest struct {
	vm      *vm
	out     io.Writer
	spec    guestSpec
	started time.Time // InstanceStart, for the boot timer

	mu      sync.Mutex
	paused  bool
	stopped bool
	resumed bool // started from a snapshot: the boot output was printed before
	st      guestState
	wake    chan struct{}
}

func newGuest(v *vm, out io.Writer, spec guestSpec) *guest {
	return &guest{vm: v, out: out, spec: spec, started: time.Now(), wake: make(chan struct{}, 1)}
}

func (g *guest) start() { go g.run() }

func (g *guest) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *guest) pause() {
	g.mu.Lock()
	g.paused = true
	g.mu.Unlock()
	g.signal()
}

func (g *guest) resume() {
	g.mu.Lock()
	g.paused = false
	g.mu.Unlock()
	g.signal()
}

// ctrlAltDel queues the key sequence in the i8042; a paused guest sees it on resume.
func (g *guest) ctrlAltDel() {
	g.mu.Lock()
	g.st.CADPending = true
	g.mu.Unlock()
	g.signal()
}

func (g *guest) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.signal()
}

func (g *guest) state() guestState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st
}

// running reports whether the guest's vCPU runs (booted, not paused, not ended).
func (g *guest) running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.paused && !g.stopped
}

// ended reports whether the guest is gone.
func (g *guest) ended() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopped
}

// vsockPeer says what the guest does with vsock connections: a Linux guest has a driver and
// listens on no port; the vsock-echo test guest echoes once its driver is up; the other
// test-guest modes have no driver.
func (g *guest) vsockPeer() vsockPeer {
	if !g.spec.testGuest {
		return peerRefuses
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.st.VsockUp {
		return peerEchoes
	}
	return peerInactive
}

func (g *guest) setCalledBack(b bool) {
	g.mu.Lock()
	g.st.VsockCalledBack = b
	g.mu.Unlock()
}

func (g *guest) print(line string) {
	_, _ = io.WriteString(g.out, line+"\n")
	g.vm.metrics.uartBytes(len(line) + 1)
}

// waitRunning blocks while the VM is paused; it returns false once the process ends.
func (g *guest) waitRunning() bool {
	for {
		g.mu.Lock()
		stopped, paused := g.stopped, g.paused
		g.mu.Unlock()
		if stopped {
			return false
		}
		if !paused {
			return true
		}
		<-g.wake
	}
}

// cadSeen reports whether the guest, running, finds Ctrl-Alt-Del in the i8042.
func (g *guest) cadSeen() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st.CADPending && !g.paused
}

// waitCAD idles until Ctrl-Alt-Del reaches the running guest (true) or the process ends.
func (g *guest) waitCAD(timeout time.Duration) (cad, stopped bool) {
	var timer <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	for {
		if !g.waitRunning() {
			return false, true
		}
		if g.cadSeen() {
			return true, false
		}
		select {
		case <-g.wake:
		case <-timer:
			return false, false
		}
	}
}

func (g *guest) reset() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.vm.guestReset()
}

func (g *guest) run() {
	if !g.waitRunning() {
		return
	}
	if !g.spec.testGuest {
		g.runLinux()
		return
	}
	mode, known := testguest.ModeFromCmdline(g.spec.cmdline)
	switch {
	case !known:
		g.print(testguest.UnknownModeLine)
		g.reset()
	case mode == testguest.ModeHello:
		g.print(testguest.HelloLine)
		g.reset()
	case mode == testguest.ModeHalt:
		if !g.resumed {
			g.print(testguest.HaltLine)
		}
		g.mu.Lock()
		g.st.Halted = true
		g.mu.Unlock()
	case mode == testguest.ModeCAD:
		if !g.resumed {
			g.print(testguest.ReadyLine)
		}
		if cad, _ := g.waitCAD(0); cad {
			g.reset()
		}
	case mode == testguest.ModeCounter:
		g.runCounter()
	case mode == testguest.ModeVsockEcho:
		g.runVsockEcho()
	}
}

// runVsockEcho brings the vsock driver up (or, without a vsock device, says so and resets),
// calls the host back, and resets on Ctrl-Alt-Del.
func (g *guest) runVsockEcho() {
	dev := g.vm.vsockDevice()
	if dev == nil {
		g.print(testguest.NoVsockLine)
		g.reset()
		return
	}
	g.mu.Lock()
	calledBack := g.resumed && g.st.VsockCalledBack
	g.st.VsockUp = true
	g.mu.Unlock()
	if !g.resumed {
		g.print(testguest.VsockReadyLine)
	}
	if !calledBack {
		// After a restore, a call that was established is gone with the old process, and
		// the guest, which never hears of it, does not call again.
		go dev.callBack(g)
	}
	if cad, _ := g.waitCAD(0); cad {
		g.reset()
	}
}

func (g *guest) runCounter() {
	for {
		if !g.waitRunning() {
			return
		}
		if g.cadSeen() {
			g.reset()
			return
		}
		g.mu.Lock()
		n := g.st.Tick
		g.st.Tick++
		g.mu.Unlock()
		g.print(testguest.TickLine(n))
		if cad, stopped := g.waitCAD(tickInterval); stopped {
			return
		} else if cad {
			g.reset()
			return
		}
	}
}

// runLinux prints a short boot log when the command line names the serial console, idles,
// and reboots (Firecracker exits) on Ctrl-Alt-Del, as a Linux guest with reboot=k does.
func (g *guest) runLinux() {
	console := false
	for _, w := range strings.Fields(g.spec.cmdline) {
		if w == "console=ttyS0" || strings.HasPrefix(w, "console=ttyS0,") {
			console = true
		}
	}
	if console && !g.resumed {
		for _, line := range []string{
			"[    0.000000] Linux version 6.1.0 (fake firecracker guest) #1 SMP",
			"[    0.000000] Command line: " + g.spec.cmdline,
			"[    0.010000] Run /sbin/init as init process",
			"fake login: ",
		} {
			g.print(line)
		}
	}
	if g.vm.bootTimer && !g.resumed {
		// Linux's init writes to the boot timer device; Firecracker logs the time since
		// InstanceStart.
		us := time.Since(g.started).Microseconds()
		g.vm.log.info(threadVCPU, "Guest-boot-time = %6d us %d ms, %6d CPU us %d CPU ms", us, us/1000, us, us/1000)
	}
	if cad, _ := g.waitCAD(0); cad {
		if console {
			g.print("reboot: Restarting system")
		}
		g.reset()
	}
}
