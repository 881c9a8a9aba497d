package jailer

import (
	"errors"
	"sync"
	"testing"

	"github.com/smartvm/smartvm/internal/safedir"
)

func openTestIDs(t *testing.T, first, count uint32) *IDs {
	t.Helper()
	root, err := safedir.OpenTrusted(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	ids, err := OpenIDs(root, "jail-ids", first, count)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ids.Close() })
	return ids
}

func TestIDs(t *testing.T) {
	ctx := t.Context()
	ids := openTestIDs(t, 1_900_000_100, 3)
	a, err := ids.Allocate(ctx, "a")
	if err != nil || a != 1_900_000_100 {
		t.Fatalf("Allocate a = %d, %v", a, err)
	}
	if again, _ := ids.Allocate(ctx, "a"); again != a {
		t.Errorf("a again got %d, want its lease %d", again, a)
	}
	b, _ := ids.Allocate(ctx, "b")
	c, _ := ids.Allocate(ctx, "c")
	if b == a || c == b || c == a {
		t.Errorf("uids not distinct: %d %d %d", a, b, c)
	}
	if _, err := ids.Allocate(ctx, "d"); !errors.Is(err, ErrIDsExhausted) {
		t.Errorf("fourth allocation: %v, want ErrIDsExhausted", err)
	}
	if err := ids.Release(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if d, err := ids.Allocate(ctx, "d"); err != nil || d != b {
		t.Errorf("after release: %d, %v; want %d", d, err, b)
	}
	leases, err := ids.Leases(ctx)
	if err != nil || len(leases) != 3 || leases[a] != "a" || leases[b] != "d" {
		t.Errorf("Leases = %v, %v", leases, err)
	}
}

func TestIDsSkipHostAccounts(t *testing.T) {
	ids := openTestIDs(t, 1, 1) // uid 1 is daemon (or bin) on every Linux
	if !hostUses(1) {
		t.Skip("uid 1 names no account on this host")
	}
	if uid, err := ids.Allocate(t.Context(), "x"); !errors.Is(err, ErrIDsExhausted) {
		t.Errorf("got uid %d, %v: a host account's uid must not be leased", uid, err)
	}
}

func TestIDsConcurrent(t *testing.T) {
	ids := openTestIDs(t, 1_900_001_000, 64)
	var mu sync.Mutex
	seen := map[uint32]bool{}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			uid, err := ids.Allocate(t.Context(), "vm-"+string(rune('a'+i)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil || seen[uid] {
				t.Errorf("allocation %d: uid %d, %v", i, uid, err)
			}
			seen[uid] = true
		})
	}
	wg.Wait()
}

// Transfer hands a lease over whole, refuses a holder that has none, and ends a stale lease
// of the taker.
func TestIDsTransfer(t *testing.T) {
	ctx := t.Context()
	ids := openTestIDs(t, 1_900_000_200, 3)
	warm, _ := ids.Allocate(ctx, "smartvm-warm-0123456789abcdef")
	other, _ := ids.Allocate(ctx, "other")
	uid, err := ids.Transfer(ctx, "smartvm-warm-0123456789abcdef", "vm")
	if err != nil || uid != warm {
		t.Fatalf("Transfer = %d, %v; want %d", uid, err, warm)
	}
	leases, err := ids.Leases(ctx)
	if err != nil || len(leases) != 2 || leases[warm] != "vm" || leases[other] != "other" {
		t.Errorf("Leases after the transfer = %v, %v", leases, err)
	}
	if _, err := ids.Transfer(ctx, "smartvm-warm-0123456789abcdef", "vm2"); err == nil {
		t.Error("a holder with no lease handed one over")
	}
	// Refused, it leaves the taker's lease alone.
	if _, err := ids.Transfer(ctx, "smartvm-warm-0123456789abcdef", "other"); err == nil {
		t.Error("a holder with no lease handed one over to a holder of one")
	}
	if leases, _ := ids.Leases(ctx); len(leases) != 2 || leases[other] != "other" {
		t.Errorf("Leases after a refused transfer = %v, want other's lease kept", leases)
	}
	// A taker that holds a lease already (a stale one, of a VM of its name that died) keeps
	// only the one handed over.
	if uid, err := ids.Transfer(ctx, "vm", "other"); err != nil || uid != warm {
		t.Errorf("Transfer to a holder of a stale lease = %d, %v; want %d", uid, err, warm)
	}
	if leases, _ := ids.Leases(ctx); len(leases) != 1 || leases[warm] != "other" {
		t.Errorf("Leases after the transfer onto a stale lease = %v", leases)
	}
	if err := ids.Release(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if leases, _ := ids.Leases(ctx); len(leases) != 0 {
		t.Errorf("Leases after releasing the taker = %v", leases)
	}
}
