package smartvm

import (
	"context"
	"errors"
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

func TestUpdateRateLimits(t *testing.T) {
	testutil.CheckLeaks(t)
	mgr := newManager(t, testRoot(t), testutil.Link(t, "firecracker"))
	spec := guestSpec(guestKernel(t), testguest.ModeCounter)
	spec.Drives = []DriveSpec{{ID: "data", Path: guestKernel(t), ReadOnly: true}}
	m := start(t, mgr, spec)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	rl := fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 100, RefillTime: 1000}}
	if err := m.UpdateRateLimits(ctx, RateLimitUpdate{Drives: map[string]fcapi.RateLimiter{"data": rl}}); err != nil {
		t.Fatal(err)
	}
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
