package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// Run runs the agent until ctx ends, a listener fails for good, or, as PID 1, the entrypoint
// ends (then it powers the machine off and does not return unless that fails). With
// cfg.MainWait, the entrypoint is the main process a Main call starts; not as PID 1, Run
// returns once it has ended: nil for exit code 0, else a *MainExitError.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Listen) == 0 {
		return errors.New("no address to listen on")
	}
	var init *InitConfig
	if cfg.PID1 {
		setupSystem(log)
		var err error
		if init, err = cfg.initConfig(); err != nil {
			// An init that exits panics the kernel: report the problem and power off.
			log.Error("init config", "err", err)
			powerOff(log)
			return err
		}
		if init.Hostname != "" {
			setHostname(log, init.Hostname)
		}
		setupNetwork(log, kernelCmdline(), init.Hostname != "")
	}
	if cfg.PID1 && mainWaitArg(kernelCmdline()) {
		cfg.MainWait = true
	}
	var main *mainProc
	if cfg.MainWait {
		if init == nil {
			var err error
			if init, err = cfg.initConfig(); err != nil {
				return err
			}
		}
		main = newMainProc(init)
	}
	procs := newReaper(cfg.PID1)
	srv := newServer(log, procs, version())
	srv.main = main
	if cfg.Stdout != nil {
		srv.console[0] = cfg.Stdout
	}
	if cfg.Stderr != nil {
		srv.console[1] = cfg.Stderr
	}

	ctx, cancel := context.WithCancel(ctx)
	// shutdown ends the listeners and waits until the calls in progress have been answered
	// (within shutdownGrace): before Run returns, and before the machine powers off.
	var serving sync.WaitGroup
	shutdown := func() { cancel(); serving.Wait() }
	defer shutdown()
	errs := make(chan error, len(cfg.Listen))
	var listeners []*relistener
	for _, addr := range cfg.Listen {
		listen, err := listenFunc(addr)
		if err != nil {
			return err
		}
		ln := &relistener{listen: listen, log: log.With("listen", addr)}
		if err := ln.open(); err != nil {
			return err
		}
		listeners = append(listeners, ln)
		log.Info("serving", "addr", addr)
		serving.Go(func() { errs <- ln.serve(ctx, srv) })
	}
	var host *announcer
	if cfg.Announce != "" {
		dial, err := announceDialer(cfg.Announce)
		if err != nil {
			return err
		}
		// A reset (a snapshot's vsock transport reset) may have broken the listeners too:
		// open them all again. Connections in progress are not affected.
		onReset := func() {
			for _, ln := range listeners {
				ln.reset()
			}
		}
		host = &announcer{dial: dial, syncClock: cfg.Announce == "vsock", log: log, pid1: cfg.PID1, onReset: onReset, events: make(chan agentwire.Hello, 1), acked: make(chan struct{}, 1)}
		go host.run(ctx)
	}
	if main != nil {
		log.Info("waiting for the host to start the main process")
		code, ok := waitMain(ctx, log, main, cfg.PID1)
		if !ok {
			return nil // ctx ended
		}
		if cfg.PID1 {
			stopAll(procs)
		}
		if host != nil {
			host.report(code)
		}
		if !cfg.PID1 {
			if code != 0 {
				return &MainExitError{Code: code}
			}
			return nil
		}
		shutdown()
		powerOff(log)
		return fmt.Errorf("the main process exited with %d, and power-off failed", code)
	}
	if init != nil && len(init.Args()) > 0 {
		code := runEntrypoint(ctx, log, procs, init, cfg)
		if host != nil {
			host.report(code)
		}
		powerOff(log)
		return fmt.Errorf("entrypoint exited with %d, and power-off failed", code)
	}
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
}

// listenFunc parses a listen address into a function that opens the listener.
func listenFunc(addr string) (func() (net.Listener, error), error) {
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "vsock":
		port := agentwire.AgentPort
		if rest != "" {
			n, err := strconv.ParseUint(rest, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("listen address %q: bad vsock port", addr)
			}
			port = uint32(n)
		}
		return func() (net.Listener, error) { return vsock.Listen(port, nil) }, nil
	case "unix":
		if rest == "" {
			return nil, fmt.Errorf("listen address %q: want unix:PATH", addr)
		}
		return func() (net.Listener, error) {
			if fi, err := os.Lstat(rest); err == nil && fi.Mode().Type() == os.ModeSocket {
				os.Remove(rest) // a stale socket from an earlier run
			}
			return net.Listen("unix", rest)
		}, nil
	case "tcp":
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return nil, fmt.Errorf("listen address %q: %w", addr, err)
		}
		return func() (net.Listener, error) { return net.Listen("tcp", rest) }, nil
	}
	return nil, fmt.Errorf("listen address %q: want vsock, vsock:PORT, unix:PATH or tcp:HOST:PORT", addr)
}

// announceDialer parses an announce address into a dial function.
func announceDialer(addr string) (func() (net.Conn, error), error) {
	if addr == "vsock" {
		return func() (net.Conn, error) { return vsock.Dial(vsock.Host, agentwire.HostPort, nil) }, nil
	}
	dial, err := agentwire.ParseAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("announce: %w", err)
	}
	return func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return dial(ctx)
	}, nil
}

// relistener serves one address, opening its listener again when it fails or is reset (a
// vsock listener after a snapshot restore).
type relistener struct {
	listen func() (net.Listener, error)
	log    *slog.Logger
	mu     sync.Mutex
	ln     net.Listener
}

func (r *relistener) open() error {
	ln, err := r.listen()
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	return nil
}

// reset closes the current listener; serve opens a new one.
func (r *relistener) reset() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
	}
	r.mu.Unlock()
}

func (r *relistener) serve(ctx context.Context, srv *Server) error {
	failures := 0
	for {
		r.mu.Lock()
		ln := r.ln
		r.mu.Unlock()
		err := srv.Serve(ctx, ln)
		ln.Close()
		if ctx.Err() != nil {
			return nil
		}
		r.log.Info("listener ended; listening again", "err", err)
		for {
			if err := r.open(); err == nil {
				failures = 0
				break
			} else if failures++; failures > 50 {
				return err
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// initConfig is cfg.Init, else the init config read from cfg.InitConfig.
func (cfg *Config) initConfig() (*InitConfig, error) {
	if cfg.Init != nil {
		return cfg.Init, nil
	}
	return loadInitConfig(cfg.InitConfig)
}
