package cli

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
)

func TestParseRateLimitUpdate(t *testing.T) {
	u, err := parseRateLimitUpdate([]string{"rootfs=bw=10M,ops=1000,burst=1M", "drive1=bw=0"}, []string{"eth0=rx-bw=1G,tx-ops=50"})
	if err != nil {
		t.Fatal(err)
	}
	want := smartvm.RateLimitUpdate{
		Drives: map[string]fcapi.RateLimiter{
			"rootfs": {Bandwidth: &fcapi.TokenBucket{Size: 10 << 20, RefillTime: 1000, OneTimeBurst: 1 << 20}, Ops: &fcapi.TokenBucket{Size: 1000, RefillTime: 1000}},
			"drive1": {Bandwidth: &fcapi.TokenBucket{RefillTime: 1000}},
		},
		Interfaces: map[string]smartvm.InterfaceRateLimits{
			"eth0": {Rx: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 30, RefillTime: 1000}}, Tx: &fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 50, RefillTime: 1000}}},
		},
	}
	if diff := cmp.Diff(want, u); diff != "" {
		t.Errorf("update (-want +got):\n%s", diff)
	}
	for _, bad := range [][2][]string{
		{nil, nil},
		{{"rootfs"}, nil},
		{{"rootfs=speed=1"}, nil},
		{{"rootfs=rx-bw=1M"}, nil},
		{nil, {"eth0=bw=1M"}},
		{{"rootfs=ops=-1"}, nil},
		{{"rootfs=bw=lots"}, nil},
	} {
		if _, err := parseRateLimitUpdate(bad[0], bad[1]); err == nil {
			t.Errorf("%q %q accepted", bad[0], bad[1])
		}
	}
}
