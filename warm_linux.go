package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/jailer"
	"github.com/smartvm/smartvm/internal/rundir"
)

// warmTimeout bounds the making of one warm jail in the background.
const warmTimeout = time.Minute

// warmPool holds the manager's warm jails (WarmJails).
type warmPool struct {
	mu     sync.Mutex
	cond   sync.Cond // signalled when a jail is made or fails; L is mu
	key    string    // warmKey of tmpl
	tmpl   MachineSpec
	want   int
	ready  []*warmJail
	making int
	err    error // why the last jail could not be made, until one is
	closed bool
	// retrying is set while a background fill that failed tries again (retryWarm), and
	// retryAgain when another failed meanwhile: the loop then goes on even if its own fill
	// succeeds.
	retrying, retryAgain bool
	wg                   sync.WaitGroup // the fills under way
	// life ends with the pool (closeWarm): a jail being made stops waiting then, whatever
	// the context of the WarmJails call that makes it.
	life context.Context
	end  context.CancelFunc
}

// warmJail is a jailed firecracker started ahead: a start that stopped once its API listened,
// before any configuration. Its files are those the VM that takes it gets.
type warmJail struct {
	s              *starter
	stdout, stderr *os.File
	// taken is closed when a start takes the jail: its watch (watchWarm) ends then.
	taken chan struct{}
}

// WarmJails keeps n warm jails ready for VMs like tmpl: jailed firecrackers started ahead,
// through the jailer, that wait for their configuration. A jailed Start whose spec matches
// tmpl takes a ready one instead of running the jailer, whose own work is about half a direct
// start: the jail's directory and its uid lease take the VM's name, and the VM is configured
// and booted as any other. A replacement is made in the background once that start is done;
// one that cannot be made is tried again after a pause that grows from a second to a minute.
//
// A spec matches tmpl when firecracker would be started the same way: the same JailerSpec,
// LogLevel, Metrics, EnablePCI, ExtraArgs and SerialInput. Only owned starts (not Detached) in
// BootModeAPI without a Network take warm jails: each is fixed when firecracker starts.
// Restores and clones of a jailed snapshot whose spec matches take them too (a snapshot loads
// through the API): a template snapshot's clones start in jails made ahead. Cgroup limits are
// served where they are cgroup v1's: the warm jail's cgroups are renamed for the VM, as its
// chroot is, and cgroup v2 refuses renames. A warm jail's firecracker keeps the ID it was
// started with, jailer.WarmIDPrefix and 16 hex digits, which its log lines name.
//
// WarmJails returns once n are ready, or with the error that stopped it: ctx ends its making
// of jails and its wait for those made in the background, and Close ends all making. A later
// call changes the count, or replaces the template (the warm jails of the old one go); n = 0
// removes them all, as Close does. Warm jails belong to this process, as owned VMs do: they
// end with it, and reaping removes what they leave. List does not show them.
func (mgr *Manager) WarmJails(ctx context.Context, tmpl MachineSpec, n int) error {
	if n < 0 {
		return fmt.Errorf("warm jails: count %d is negative", n)
	}
	tmpl = tmpl.WithDefaults()
	if err := warmable(tmpl); err != nil {
		return fmt.Errorf("warm jails: %w", err)
	}
	if err := warmableCgroups(tmpl.Jailer); err != nil {
		return fmt.Errorf("warm jails: %w", err)
	}
	if errs := tmpl.Jailer.problems(); len(errs) > 0 {
		return fmt.Errorf("warm jails: %w", errors.Join(errs...))
	}
	p := &mgr.warm
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("warm jails: %w", ErrClosed)
	}
	var drop []*warmJail
	if key := warmKey(tmpl); key != p.key {
		drop, p.ready, p.key, p.tmpl = p.ready, nil, key, tmpl
	}
	if len(p.ready) > n {
		drop = append(drop, p.ready[n:]...)
		p.ready = append([]*warmJail(nil), p.ready[:n]...)
	}
	p.want, p.err = n, nil
	if p.life == nil {
		p.cond.L = &p.mu
		p.life, p.end = context.WithCancel(context.Background())
	}
	p.wg.Add(1)
	p.mu.Unlock()
	discardWarm(drop)
	mgr.fillWarm(ctx) // its error is p.err, reported below
	p.wg.Done()

	p.mu.Lock()
	defer p.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	for p.making > 0 && ctx.Err() == nil {
		p.cond.Wait() // a background fill under way: it ends ready, or removed if surplus
	}
	if p.making > 0 {
		return fmt.Errorf("warm jails: %d of %d ready, %d being made in the background: %w", len(p.ready), p.want, p.making, ctx.Err())
	}
	if len(p.ready) < p.want {
		err := p.err
		if err == nil {
			err = errors.New("the manager was closed meanwhile, or another call changed the pool")
		}
		return fmt.Errorf("warm jails: %d of %d ready: %w", len(p.ready), p.want, err)
	}
	return nil
}

// warmable reports why spec cannot be served by a warm jail: what it asks for is fixed when
// firecracker starts, before a warm jail knows its VM.
func warmable(spec MachineSpec) error {
	switch js := spec.Jailer; {
	case js == nil:
		return errors.New("the spec has no JailerSpec: warm jails are jailed firecrackers")
	case spec.BootMode == BootModeConfigFile:
		return errors.New("a config-file boot passes its configuration when firecracker starts: use BootModeAPI")
	case spec.Network != nil:
		return errors.New("a VM with a Network has firecracker join its network namespace as it starts: warm jails serve VMs without one")
	}
	return nil
}

// warmableCgroups reports why the cgroups of a jail of js cannot take a VM's name: a warm
// jail's are renamed for the VM that takes it, which cgroup v2 refuses.
func warmableCgroups(js *JailerSpec) error {
	if js.limits().IsZero() && js.CgroupVersion == 0 {
		return nil // no cgroups of its own
	}
	v := js.CgroupVersion
	if v == 0 {
		layout, err := jailer.DetectCgroups()
		if err != nil {
			return err
		}
		v = layout.Version()
	}
	if v != 1 {
		return errors.New("cgroup limits under cgroup v2: a warm jail's cgroups are renamed for the VM that takes it, and cgroup v2 refuses renames; start such VMs without warm jails, or without limits")
	}
	return nil
}

// warmSpec is what of spec decides how firecracker starts: a warm jail is made with that
// alone (its record holds no devices, no vsock CID), and serves the specs that share it.
func warmSpec(spec MachineSpec) MachineSpec {
	return MachineSpec{Jailer: spec.Jailer, LogLevel: spec.LogLevel, Metrics: spec.Metrics,
		EnablePCI: spec.EnablePCI, ExtraArgs: spec.ExtraArgs, SerialInput: spec.SerialInput}
}

// warmKey is warmSpec's identity: a warm jail serves the specs of its template's key.
func warmKey(spec MachineSpec) string {
	b, _ := json.Marshal(warmSpec(spec)) // a MachineSpec always marshals
	return string(b)
}

// fillWarm makes warm jails, one at a time, until the pool has or makes as many as it wants.
// It returns the error that stopped it short.
func (mgr *Manager) fillWarm(ctx context.Context) error {
	p := &mgr.warm
	for {
		p.mu.Lock()
		if p.closed || len(p.ready)+p.making >= p.want {
			p.mu.Unlock()
			return nil
		}
		p.making++
		key, tmpl, life := p.key, p.tmpl, p.life
		p.mu.Unlock()

		mctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(life, cancel)
		w, err := mgr.makeWarm(mctx, tmpl)
		stop()
		cancel()
		p.mu.Lock()
		if err == nil && (p.closed || key != p.key || len(p.ready) >= p.want) {
			// Not wanted any more: gone before it stops counting as being made, so that a
			// caller waiting for the pool to settle never sees it left.
			p.mu.Unlock()
			discardWarm([]*warmJail{w})
			p.mu.Lock()
			w = nil
		}
		p.making--
		switch {
		case err != nil:
			p.err = err
		case w != nil:
			p.ready, p.err = append(p.ready, w), nil
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		if w != nil {
			p.wg.Go(func() { mgr.watchWarm(w) })
		}
		if err != nil {
			mgr.log.Warn("make a warm jail", "err", err)
			return err
		}
	}
}

// makeWarm starts a warm jail for VMs like tmpl.
func (mgr *Manager) makeWarm(ctx context.Context, tmpl MachineSpec) (*warmJail, error) {
	spec := warmSpec(tmpl)
	spec.Name = jailer.NewWarmID()
	s := &starter{mgr: mgr, spec: spec, prov: apiBoot{}, log: mgr.log.With("warm_jail", spec.Name),
		begin: time.Now(), warming: true}
	w, err := s.makeWarm(ctx)
	if err != nil {
		s.rollback(ctx)
		return nil, err
	}
	s.log.Debug("warm jail ready", "took", time.Since(s.begin))
	return w, nil
}

// makeWarm runs the steps of a jailed start that come before the configuration: a directory
// under the warm ID, the jail, the files, and firecracker through the jailer, until its API
// listens.
func (s *starter) makeWarm(ctx context.Context) (*warmJail, error) {
	// binKey is probed before the jailer copies the binary: a newer file is never taken for it.
	if err := s.findFirecracker(ctx); err != nil {
		return nil, err
	}
	var err error
	if s.dir, err = s.mgr.root.Create(ctx, s.spec.Name); err != nil {
		return nil, err
	}
	s.push(s.dir.Remove)
	if err := s.prepareJail(ctx); err != nil {
		return nil, err
	}
	stdout, stderr, err := s.createFiles()
	if err != nil {
		return nil, err
	}
	w := &warmJail{s: s, stdout: stdout, stderr: stderr, taken: make(chan struct{})}
	err = s.ownJailLogs()
	if err == nil {
		err = s.spawn(fcapi.VMConfig{}, stdout, stderr)
	}
	if err == nil {
		err = s.dir.WriteState(s.state())
	}
	if err == nil {
		err = fcapi.WaitListening(ctx, s.dir.APISocket, s.proc.Done())
	}
	if err != nil {
		w.closeFiles()
		return nil, err
	}
	return w, nil
}

// closeFiles closes the files the warm jail holds for its VM.
func (w *warmJail) closeFiles() {
	w.stdout.Close()
	w.stderr.Close()
	if w.s.stdin != nil {
		w.s.stdin.Close()
	}
}

// sameFile reports whether k and o are one file with the same contents as far as its
// metadata tells: the same inode, size and modification time. The change time is left out:
// the jailer's hard link of the binary into a chroot changes it.
func (k binaryKey) sameFile(o binaryKey) bool {
	return k.Path == o.Path && k.Dev == o.Dev && k.Ino == o.Ino && k.Size == o.Size && k.Mtime == o.Mtime
}

// discardWarm ends warm jails and removes what they leave.
func discardWarm(ws []*warmJail) {
	for _, w := range ws {
		w.closeFiles()
		w.s.rollback(context.Background())
	}
}

// warmProvisioner reports whether a start of p's kind can take a warm jail: a boot through the
// API, or a restore (its load is an API request) that needs no mount namespace of its own,
// as a jailed one never does.
func warmProvisioner(p provisioner) bool {
	switch p := p.(type) {
	case apiBoot:
		return true
	case snapshotLoad:
		return len(p.plan.aliases) == 0
	}
	return false
}

// takeWarm hands s a ready warm jail of its spec's key, if there is one (refillWarm replaces
// it).
func (mgr *Manager) takeWarm(s *starter) *warmJail {
	if !warmProvisioner(s.prov) || s.warming || s.opts.detached || warmable(s.spec) != nil {
		return nil
	}
	p := &mgr.warm
	p.mu.Lock()
	if len(p.ready) == 0 { // no pool, or an empty one: nothing to compare
		p.mu.Unlock()
		return nil
	}
	key := warmKey(s.spec)
	var w *warmJail
	var dead []*warmJail
	for w == nil && !p.closed && p.key == key && len(p.ready) > 0 {
		w, p.ready = p.ready[0], p.ready[1:]
		select {
		case <-w.s.proc.Done(): // killed meanwhile
			dead, w = append(dead, w), nil
		default:
			// A start takes the jail only while its firecracker is still the file the jail
			// runs (an upgrade in place keeps the path, often the version).
			if !w.s.binKey.sameFile(s.binKey) || w.s.exe != s.exe || w.s.version != s.version {
				dead, w = append(dead, w), nil // firecracker was replaced since
			}
		}
	}
	p.mu.Unlock()
	discardWarm(dead)
	if w != nil {
		close(w.taken)
	}
	return w
}

// watchWarm removes w from the pool if its firecracker dies while it waits (killed, or out of
// memory), with what it holds (chroot, uid lease, directory), and has it replaced. A warm jail
// taken by a start, or removed, is not the pool's any more: its end is not this watch's.
func (mgr *Manager) watchWarm(w *warmJail) {
	select {
	case <-w.s.proc.Done():
	case <-w.taken:
		return
	}
	p := &mgr.warm
	p.mu.Lock()
	i := slices.Index(p.ready, w)
	if i >= 0 {
		p.ready = slices.Delete(p.ready, i, i+1)
	}
	p.mu.Unlock()
	if i < 0 {
		return
	}
	mgr.log.Warn("a warm jail's firecracker ended while it waited", "warm_jail", w.s.spec.Name, "status", w.s.proc.Status())
	discardWarm([]*warmJail{w})
	mgr.refillWarm()
}

// refillWarm has the warm jails taken replaced in the background. A start that took one calls
// it once it is done, so that the replacement does not compete with it for the host.
func (mgr *Manager) refillWarm() {
	p := &mgr.warm
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.ready)+p.making >= p.want {
		return
	}
	p.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), warmTimeout)
		err := mgr.fillWarm(ctx)
		cancel()
		if err != nil {
			mgr.retryWarm()
		}
	})
}

// warmRetry is the first pause before a background fill that failed tries again; it doubles
// with each failure, up to warmRetryMax. A variable for tests.
var warmRetry = time.Second

const warmRetryMax = time.Minute

// retryWarm has a background fill that failed try again, after pauses that grow (warmRetry,
// warmRetryMax), until the pool has what it wants or ends: a jail that could not be made for
// a while (no free uid while the jailed VMs hold them all, a firecracker being replaced) is
// made once it can be, with no start needed to ask again. One retry runs at a time.
func (mgr *Manager) retryWarm() {
	p := &mgr.warm
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if p.retrying {
		// The running loop may be about to end on a fill of its own that succeeded while
		// this one was failing: it goes round once more.
		p.retryAgain = true
		p.mu.Unlock()
		return
	}
	p.retrying = true
	life := p.life // set by the WarmJails call that made the pool
	p.mu.Unlock()
	for pause := warmRetry; ; pause = min(2*pause, warmRetryMax) {
		t := time.NewTimer(pause)
		select {
		case <-life.Done():
			t.Stop()
			p.mu.Lock()
			p.retrying = false
			p.mu.Unlock()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(life, warmTimeout)
		err := mgr.fillWarm(ctx)
		cancel()
		p.mu.Lock()
		again := p.retryAgain
		p.retryAgain = false
		if err == nil && !again {
			p.retrying = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		if err == nil {
			pause = warmRetry / 2 // another fill failed meanwhile: soon, as after a first failure
		}
	}
}

// adoptWarmStep, when set (by tests), is called after each step of adoptWarm that changes
// what a crash would leave: "linked", "recorded", "transferred", "warm-dir-removed",
// "renamed".
var adoptWarmStep func(step string)

func adoptStep(step string) {
	if adoptWarmStep != nil {
		adoptWarmStep(step)
	}
}

// adoptWarm makes the warm jail w this start's: its console and stderr become the VM's, the
// VM's record names the jail (and the warm jail it comes from), the warm jail's own directory
// goes, and the jail's directory and uid lease take the VM's name. Undoing the start undoes
// the warm jail. The order leaves one record at a time that covers the jail, so that reaping
// after a crash at any step removes it all (rundir.Jail.WarmID, recordedJail).
func (s *starter) adoptWarm(ctx context.Context, w *warmJail) error {
	m := w.s
	removed := false
	warmDir := m.undo[0]
	s.push(func(ctx context.Context) error {
		if removed {
			return nil
		}
		return warmDir(ctx)
	})
	s.undo = append(s.undo, m.undo[1:]...)
	m.undo = nil
	s.jail, s.proc, s.serial, s.stdin, s.warm = m.jail, m.proc, m.serial, m.stdin, w
	name, warmID := s.spec.Name, m.spec.Name
	links := map[string]*os.File{rundir.SerialFile: w.stdout, rundir.StderrFile: w.stderr}
	if s.stdin != nil {
		links[rundir.SerialInFile] = s.stdin
	}
	for name, f := range links {
		if err := s.dir.LinkFile(ctx, f, name); err != nil {
			return err
		}
	}
	adoptStep("linked")
	// The record names the jail's new directory before the move: it must be free, or reaping
	// after a crash here would take another's jail for this one.
	if err := s.jail.tree.CheckFree(name); err != nil {
		return err
	}
	moved := s.jail.cfg
	moved.ID = name
	s.jail.rec.Chroot, s.jail.rec.WarmID = moved.Chroot().Root, warmID
	// The record names the cgroups the jail's take the VM's name as (a new slice: the jail's
	// own, which its undo removes, are renamed below).
	s.jail.rec.CgroupDirs = make([]string, len(s.jail.cgroupDirs))
	for i, d := range s.jail.cgroupDirs {
		s.jail.rec.CgroupDirs[i] = filepath.Join(filepath.Dir(d), name)
	}
	s.dir.UseJail(s.jail.rec)
	if err := s.dir.WriteState(s.state()); err != nil {
		return err
	}
	adoptStep("recorded")
	// The lease goes to the VM before the warm jail's directory does: reaping releases a lease
	// whose holder has no directory (reclaimJailIDs).
	if s.jail.lease != "" {
		ids, err := s.mgr.jailIDs()
		if err != nil {
			return err
		}
		_, err = ids.Transfer(ctx, s.jail.lease, name)
		ids.Close()
		if err != nil {
			return err
		}
		s.jail.lease = name
		adoptStep("transferred")
	}
	if err := warmDir(ctx); err != nil {
		return fmt.Errorf("remove the directory of warm jail %s: %w", warmID, err)
	}
	removed = true
	adoptStep("warm-dir-removed")
	if err := s.jail.tree.Rename(name); err != nil {
		return err
	}
	s.jail.cfg.ID = name
	for i, d := range s.jail.cgroupDirs { // cgroup v1's (warmableCgroups)
		if err := os.Rename(d, s.jail.rec.CgroupDirs[i]); err != nil {
			return fmt.Errorf("%w: give the warm jail's cgroup the vm's name: %w", ErrJailer, err)
		}
		s.jail.cgroupDirs[i] = s.jail.rec.CgroupDirs[i]
	}
	adoptStep("renamed")
	s.jail.rec.WarmID = ""
	if err := s.dir.WriteState(s.state()); err != nil {
		return err
	}
	s.log.Debug("took a warm jail", "warm_jail", warmID, "pid", s.proc.PID())
	return nil
}

// closeWarm removes the warm jails, for Close: none is made after it.
func (mgr *Manager) closeWarm() {
	p := &mgr.warm
	p.mu.Lock()
	p.closed = true
	if p.end != nil {
		p.end()
	}
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	discardWarm(ready) // first: their watches (watchWarm) end with them
	p.wg.Wait()
}
