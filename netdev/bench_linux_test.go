package netdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// The benchmarks run in a namespace of their own (root only), like the tests.

// BenchmarkSetupTeardown sets up and tears down one VM's network: a /30 lease, the TAP with
// its address, and the NAT rule (with the table and chain, created and deleted each time).
func BenchmarkSetupTeardown(b *testing.B) {
	benchSetupTeardown(b, 1, Config{NAT: true})
}

// BenchmarkSetupTeardownNetns is the same with the VM in its own network namespace.
func BenchmarkSetupTeardownNetns(b *testing.B) {
	benchSetupTeardown(b, 1, Config{NAT: true, Netns: true})
}

// BenchmarkSetupTeardown50 sets up 50 VMs' networks concurrently, then tears them down
// concurrently; an op is the whole batch.
func BenchmarkSetupTeardown50(b *testing.B) {
	benchSetupTeardown(b, 50, Config{NAT: true})
}

func benchSetupTeardown(b *testing.B, vms int, cfg Config) {
	ns := enterTestNetns(b)
	ns.addUplink(b)
	cfg.Dir, cfg.NetnsDir = stateDir(b), b.TempDir()
	ctx := context.Background()
	nets := make([]*Network, vms)
	errs := make([]error, vms)
	// each runs fn(i) for every VM, concurrently when there are several, inside the test's
	// namespace.
	each := func(fn func(i int) error) {
		if vms == 1 {
			errs[0] = fn(0)
		} else {
			var wg sync.WaitGroup
			for i := range vms {
				wg.Go(func() { errs[i] = InNetns(ns.Path, func() error { return fn(i) }) })
			}
			wg.Wait()
		}
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
	}
	var setup, teardown time.Duration
	for b.Loop() {
		t0 := time.Now()
		each(func(i int) error {
			c := cfg
			c.Owner = fmt.Sprintf("bench%d", i)
			var err error
			nets[i], err = Setup(ctx, c)
			return err
		})
		t1 := time.Now()
		each(func(i int) error { return nets[i].Teardown(ctx) })
		setup, teardown = setup+t1.Sub(t0), teardown+time.Since(t1)
	}
	perVM := float64(b.N * vms)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/perVM, "ns/vm")
	b.ReportMetric(float64(setup.Nanoseconds())/perVM, "setup-ns/vm")
	b.ReportMetric(float64(teardown.Nanoseconds())/perVM, "teardown-ns/vm")
	ns.checkClean(b, cfg.Dir, cfg.NetnsDir)
}

// stateDir returns a temporary state directory where the runtime root lives by default, on
// /dev/shm when it is there, else in the test's temporary directory.
func stateDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "netdev-bench-")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
