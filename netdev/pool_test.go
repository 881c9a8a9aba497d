package netdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/smartvm/smartvm/internal/testutil"
)

func newTestPool(t *testing.T, prefix string) *Pool {
	t.Helper()
	var pfx netip.Prefix
	if prefix != "" {
		pfx = netip.MustParsePrefix(prefix)
	}
	p, err := NewPool(t.TempDir(), pfx)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolAllocateRelease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newTestPool(t, "")
	if got, want := p.Prefix(), netip.MustParsePrefix(DefaultPool); got != want {
		t.Fatalf("default prefix %s, want %s", got, want)
	}
	a, _ := p.Allocate(ctx, "vm-a")
	b, _ := p.Allocate(ctx, "vm-b")
	a2, err := p.Allocate(ctx, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"172.16.0.0/30", "172.16.0.4/30", "172.16.0.8/30"}
	if got := []string{a.String(), b.String(), a2.String()}; !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	if err := p.Release(ctx, "vm-a"); err != nil {
		t.Fatal(err)
	}
	ls, err := p.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].Owner != "vm-b" || ls[0].Subnet != b || ls[0].Created.IsZero() {
		t.Fatalf("leases after release: %+v", ls)
	}
	// The lowest free /30 is reused; a new Pool on the same directory sees the same leases.
	p2, err := NewPool(p.Dir(), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p2.Allocate(ctx, "vm-c")
	if err != nil || c != a {
		t.Fatalf("allocate after release = %s, %v; want %s", c, err, a)
	}
	if err := p.Release(ctx, "nobody"); err != nil {
		t.Fatalf("release of an owner without leases: %v", err)
	}
}

func TestPoolExhausted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newTestPool(t, "10.1.2.0/29")
	for range 2 {
		if _, err := p.Allocate(ctx, "x"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := p.Allocate(ctx, "y")
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("third allocation from a /29: %v, want ErrPoolExhausted", err)
	}
	if !strings.Contains(err.Error(), "10.1.2.0/29") {
		t.Errorf("error %q does not name the pool", err)
	}
}

func TestPoolAllocateManyIsAllOrNothing(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, "10.1.2.0/28")
	avoid := func(s netip.Prefix) bool { return s.Addr() == netip.MustParseAddr("10.1.2.4") }
	err := p.locked(context.Background(), func() error {
		got, err := p.allocateLocked("a", 3, avoid)
		if err != nil {
			return err
		}
		if want := []netip.Prefix{netip.MustParsePrefix("10.1.2.0/30"), netip.MustParsePrefix("10.1.2.8/30"), netip.MustParsePrefix("10.1.2.12/30")}; !slices.Equal(got, want) {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		if _, err := p.allocateLocked("b", 1, avoid); !errors.Is(err, ErrPoolExhausted) {
			return fmt.Errorf("allocation past the avoided /30: %v", err)
		}
		ls, _ := p.leasesLocked()
		if len(ls) != 3 {
			return fmt.Errorf("failed allocation left leases: %+v", ls)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNewPoolErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ dir, prefix, want string }{
		{"", "10.0.0.0/8", "no state directory"},
		{t.TempDir(), "10.0.0.0/31", "/30 or larger"},
		{t.TempDir(), "fd00::/64", "IPv4"},
		{t.TempDir(), "10.0.0.1/24", "did you mean 10.0.0.0/24"},
	} {
		_, err := NewPool(tc.dir, netip.MustParsePrefix(tc.prefix))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewPool(%q, %s) = %v, want an error containing %q", tc.dir, tc.prefix, err, tc.want)
		}
	}
}

func TestPoolLockHonoursContext(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	err := p.locked(context.Background(), func() error {
		cancel()
		_, err := p.Allocate(ctx, "x")
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("allocate while the lock is held with a cancelled ctx: %v", err)
	}
}

const poolHelperName = "netdev-pool-helper"

// poolHelperMain is the test binary run as netdev-pool-helper DIR OWNER N: it allocates N /30s
// one at a time and prints them.
func poolHelperMain(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netdev-pool-helper DIR OWNER N")
		return 2
	}
	n, _ := strconv.Atoi(args[2])
	p, err := NewPool(args[0], netip.MustParsePrefix("10.200.0.0/22"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for range n {
		s, err := p.Allocate(context.Background(), args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(s)
	}
	return 0
}

// TestPoolAcrossProcesses runs several processes allocating from one directory at once: no
// /30 is handed out twice, and the lease files agree with what each process was given.
func TestPoolAcrossProcesses(t *testing.T) {
	t.Parallel()
	bin := testutil.Link(t, poolHelperName)
	dir := t.TempDir()
	const procs, each = 6, 15
	outs := make([]bytes.Buffer, procs)
	var wg sync.WaitGroup
	errs := make([]error, procs)
	for i := range procs {
		wg.Go(func() {
			cmd := exec.Command(bin, dir, fmt.Sprintf("p%d", i), strconv.Itoa(each))
			cmd.Stdout = &outs[i]
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("helper %d: %w: %s", i, err, stderr.String())
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for i := range procs {
		lines := strings.Fields(outs[i].String())
		if len(lines) != each {
			t.Fatalf("helper %d printed %d subnets, want %d", i, len(lines), each)
		}
		for _, s := range lines {
			if prev, dup := owner[s]; dup {
				t.Fatalf("%s handed to p%d and %s", s, i, prev)
			}
			owner[s] = fmt.Sprintf("p%d", i)
		}
	}
	p, _ := NewPool(dir, netip.MustParsePrefix("10.200.0.0/22"))
	ls, err := p.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != procs*each {
		t.Fatalf("%d leases on disk, want %d", len(ls), procs*each)
	}
	for _, l := range ls {
		if owner[l.Subnet.String()] != l.Owner {
			t.Errorf("lease %s on disk belongs to %q, but was handed to %q", l.Subnet, l.Owner, owner[l.Subnet.String()])
		}
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, "leases", ".tmp-*")); len(ents) > 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}
