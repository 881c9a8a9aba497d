package smartvm

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/smartvm/smartvm/fcapi"
	"github.com/smartvm/smartvm/internal/testguest"
	"github.com/smartvm/smartvm/internal/testutil"
)

func TestApplyNICRateLimits(t *testing.T) {
	rl := &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 1000}}
	spec := MachineSpec{Network: &NetworkSpec{NICs: []NICSpec{{ID: "eth0"}, {ID: "eth1", TxRateLimiter: rl}}}}
	cfg := fcapi.VMConfig{NetworkInterfaces: []fcapi.NetworkInterface{{IfaceID: "eth0"}, {IfaceID: "eth1"}}}
	applyNICRateLimits(spec, &cfg)
	if cfg.NetworkInterfaces[0].TxRateLimiter != nil || cfg.NetworkInterfaces[1].TxRateLimiter != rl || cfg.NetworkInterfaces[1].RxRateLimiter != nil {
		t.Errorf("interfaces: %+v", cfg.NetworkInterfaces)
	}
}

func TestUpdateRateLimits(t *testing.T) { testUpdateRateLimits(t, testutil.Link(t, "firecracker")) }

// TestRealUpdateRateLimits: the real firecracker takes the PATCHes, and the spec records them.
func TestRealUpdateRateLimits(t *testing.T) { testUpdateRateLimits(t, testutil.FirecrackerBin(t)) }

func testUpdateRateLimits(t *testing.T, bin string) {
	testutil.CheckLeaks(t)
	mgr := newManager(t, testRoot(t), bin)
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Drives = []DriveSpec{{ID: "data", Path: guestKernel(t), ReadOnly: true,
		RateLimiter: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 1000}}}}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	rl := fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 100, RefillTime: 1000}}
	if err := m.UpdateRateLimits(ctx, RateLimitUpdate{Drives: map[string]fcapi.RateLimiter{"data": rl}}); err != nil {
		t.Fatal(err)
	}
	// Recorded: in this Machine's spec, and in state.json, which another process attaches.
	bw := &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 1000}
	want := &fcapi.RateLimiter{Bandwidth: bw, Ops: rl.Ops}
	checkDriveLimit(t, mgr, m, want)
	off := fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{}}
	if err := m.UpdateRateLimits(ctx, RateLimitUpdate{Drives: map[string]fcapi.RateLimiter{"data": off}}); err != nil {
		t.Fatal(err)
	}
	checkDriveLimit(t, mgr, m, &fcapi.RateLimiter{Ops: rl.Ops})
	var apiErr *fcapi.APIError
	if err := m.UpdateRateLimits(ctx, RateLimitUpdate{Drives: map[string]fcapi.RateLimiter{"nope": rl}}); !errors.As(err, &apiErr) {
		t.Errorf("unknown drive: %v, want an *fcapi.APIError", err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Wait(ctx)
	if err := m.UpdateRateLimits(ctx, RateLimitUpdate{}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("after the end: %v, want ErrNotRunning", err)
	}
}

// checkDriveLimit checks the limiter of m's drive "data" in m's spec and in the spec
// state.json records.
func checkDriveLimit(t *testing.T, mgr *Manager, m *Machine, want *fcapi.RateLimiter) {
	t.Helper()
	if got := m.Spec().Drives[0].RateLimiter; !reflect.DeepEqual(got, want) {
		t.Errorf("Spec's limiter: %s, want %s", jsonOf(got), jsonOf(want))
	}
	_, st, err := mgr.root.Lookup(m.Name())
	if err != nil {
		t.Fatal(err)
	}
	var spec MachineSpec
	if err := json.Unmarshal(st.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	if got := spec.Drives[0].RateLimiter; !reflect.DeepEqual(got, want) {
		t.Errorf("state.json's limiter: %s, want %s", jsonOf(got), jsonOf(want))
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestRateLimitUpdateApplyTo(t *testing.T) {
	bucket := func(n int64) *fcapi.TokenBucket { return &fcapi.TokenBucket{Size: n, RefillTime: 1000} }
	spec := MachineSpec{
		Drives:     []DriveSpec{{ID: "rootfs", RateLimiter: &fcapi.RateLimiter{Bandwidth: bucket(1), Ops: bucket(2)}}, {ID: "drive1"}},
		Interfaces: []InterfaceSpec{{ID: "eth0", TxRateLimiter: &fcapi.RateLimiter{Ops: bucket(3)}}},
		Network:    &NetworkSpec{NICs: []NICSpec{{ID: "eth1", RxRateLimiter: &fcapi.RateLimiter{Bandwidth: bucket(4)}}}},
	}
	before := jsonOf(spec)
	u := RateLimitUpdate{
		Drives: map[string]fcapi.RateLimiter{
			"rootfs": {Bandwidth: &fcapi.TokenBucket{}}, // removes the bandwidth bucket only
			"drive1": {Ops: bucket(5)},                  // adds a limiter
			"other":  {Ops: bucket(6)},                  // no such drive: nothing
		},
		Interfaces: map[string]InterfaceRateLimits{
			"eth0": {Rx: &fcapi.RateLimiter{Bandwidth: bucket(7)}}, // Tx stays
			"eth1": {Rx: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{RefillTime: 1000}}},
		},
	}
	got := u.applyTo(spec)
	if jsonOf(spec) != before {
		t.Errorf("applyTo changed its argument: %s", jsonOf(spec))
	}
	want := MachineSpec{
		Drives:     []DriveSpec{{ID: "rootfs", RateLimiter: &fcapi.RateLimiter{Ops: bucket(2)}}, {ID: "drive1", RateLimiter: &fcapi.RateLimiter{Ops: bucket(5)}}},
		Interfaces: []InterfaceSpec{{ID: "eth0", RxRateLimiter: &fcapi.RateLimiter{Bandwidth: bucket(7)}, TxRateLimiter: &fcapi.RateLimiter{Ops: bucket(3)}}},
		Network:    &NetworkSpec{NICs: []NICSpec{{ID: "eth1"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("applyTo:\n got %s\nwant %s", jsonOf(got), jsonOf(want))
	}
}
