package cli

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/smartvm/smartvm"
	"github.com/smartvm/smartvm/fcapi"
)

func (a *app) newUpdateCmd() *cobra.Command {
	var drives, nics []string
	cmd := &cobra.Command{
		Use:   "update NAME [--drive ID=LIMITS]... [--nic ID=LIMITS]...",
		Short: "Change a running VM's drive and network rate limits",
		Long: `Change the rate limits of a running VM's drives and network interfaces, as Firecracker's
rate limiters: a bandwidth bucket (bytes) and an operations bucket, each refilled every second.

  --drive ID=bw=SIZE,ops=N          drive ID (rootfs, drive1, ...): SIZE bytes and N operations a second
  --nic ID=rx-bw=SIZE,tx-bw=SIZE,rx-ops=N,tx-ops=N
                                    interface ID (eth0, ...): received and sent traffic

SIZE takes a unit (10M, 1G). A limit given as 0 is removed; one not given stays as it is.
Add burst=SIZE (or rx-burst, tx-burst, ops-burst...) for a one-time allowance spent first.`,
		Args:              exactArgs(1, "one VM name"),
		ValidArgsFunction: a.completeOneVMName,
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := parseRateLimitUpdate(drives, nics)
			if err != nil {
				return err
			}
			return a.onVMs(cmd.Context(), args, vmRelease, nil, func(ctx context.Context, m *smartvm.Machine) error {
				return m.UpdateRateLimits(ctx, u)
			})
		},
	}
	cmd.Flags().StringArrayVar(&drives, "drive", nil, "a drive's limits: `ID=bw=SIZE,ops=N` (repeatable)")
	cmd.Flags().StringArrayVar(&nics, "nic", nil, "an interface's limits: `ID=rx-bw=SIZE,tx-bw=SIZE,rx-ops=N,tx-ops=N` (repeatable)")
	return cmd
}

// parseRateLimitUpdate reads update's --drive and --nic values.
func parseRateLimitUpdate(drives, nics []string) (smartvm.RateLimitUpdate, error) {
	var u smartvm.RateLimitUpdate
	if len(drives)+len(nics) == 0 {
		return u, usagef("nothing to update: give --drive ID=... or --nic ID=...")
	}
	for _, v := range drives {
		id, lim, err := parseLimits("--drive", v, "")
		if err != nil {
			return u, err
		}
		if u.Drives == nil {
			u.Drives = map[string]fcapi.RateLimiter{}
		}
		u.Drives[id] = lim[""]
	}
	for _, v := range nics {
		id, lim, err := parseLimits("--nic", v, "rx-", "tx-")
		if err != nil {
			return u, err
		}
		if u.Interfaces == nil {
			u.Interfaces = map[string]smartvm.InterfaceRateLimits{}
		}
		var l smartvm.InterfaceRateLimits
		if rl, ok := lim["rx-"]; ok {
			l.Rx = &rl
		}
		if rl, ok := lim["tx-"]; ok {
			l.Tx = &rl
		}
		u.Interfaces[id] = l
	}
	return u, nil
}

// parseLimits reads ID=key=value,... where each key is a prefix (one of prefixes) followed by
// bw, ops, burst or ops-burst, and returns a limiter per prefix named. Buckets refill every
// second: bw and ops are per-second rates.
func parseLimits(flag, v string, prefixes ...string) (string, map[string]fcapi.RateLimiter, error) {
	id, spec, ok := strings.Cut(v, "=")
	if !ok || id == "" || spec == "" {
		return "", nil, usagef("invalid %s %q: want ID=LIMIT,... such as %s", flag, v, example(prefixes))
	}
	out := map[string]fcapi.RateLimiter{}
	for _, kv := range strings.Split(spec, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return "", nil, usagef("invalid %s %q: %q is not KEY=VALUE", flag, v, kv)
		}
		prefix, key := "", k
		for _, p := range prefixes {
			if rest, ok := strings.CutPrefix(k, p); ok && p != "" {
				prefix, key = p, rest
			}
		}
		if !slices.Contains(prefixes, prefix) {
			return "", nil, usagef("invalid %s %q: unknown limit %q (want %s)", flag, v, k, example(prefixes))
		}
		var n int64
		var err error
		if key == "ops" || key == "ops-burst" {
			n, err = strconv.ParseInt(val, 10, 64)
			if err == nil && n < 0 {
				err = errors.New("negative")
			}
		} else if val == "0" {
			n = 0
		} else {
			n, err = parseBytes(val)
		}
		if err != nil {
			return "", nil, usagef("invalid %s %q: %s=%s: %v", flag, v, k, val, err)
		}
		rl := out[prefix]
		bucket := func(b **fcapi.TokenBucket) *fcapi.TokenBucket {
			if *b == nil {
				*b = &fcapi.TokenBucket{RefillTime: 1000}
			}
			return *b
		}
		switch key {
		case "bw":
			bucket(&rl.Bandwidth).Size = n
		case "ops":
			bucket(&rl.Ops).Size = n
		case "burst":
			bucket(&rl.Bandwidth).OneTimeBurst = n
		case "ops-burst":
			bucket(&rl.Ops).OneTimeBurst = n
		default:
			return "", nil, usagef("invalid %s %q: unknown limit %q (want %s)", flag, v, k, example(prefixes))
		}
		out[prefix] = rl
	}
	return id, out, nil
}

func example(prefixes []string) string {
	if len(prefixes) == 1 {
		return "bw=10M,ops=1000"
	}
	return "rx-bw=10M,tx-bw=10M,rx-ops=1000,tx-ops=1000"
}

// rateFlags are run's rate-limit flags.
type rateFlags struct{ drives, nics []string }

func addRateFlags(fl *pflag.FlagSet, f *rateFlags) {
	fl.StringArrayVar(&f.drives, "drive-limit", nil, "rate-limit a drive (repeatable): `ID=bw=SIZE,ops=N` a second; IDs are rootfs, drive1, ... (see 'smartvm update --help')")
	fl.StringArrayVar(&f.nics, "nic-limit", nil, "rate-limit a NIC of --net (repeatable): `ID=rx-bw=SIZE,tx-bw=SIZE,rx-ops=N,tx-ops=N` a second")
}

// applyRateFlags puts run's --drive-limit and --nic-limit into the plan's spec, by the IDs
// the spec gives its drives and NICs.
func applyRateFlags(f rateFlags, plan *runPlan) error {
	if len(f.drives)+len(f.nics) == 0 {
		return nil
	}
	u, err := parseRateLimitUpdate(f.drives, f.nics)
	if err != nil {
		return err
	}
	s := &plan.Spec
	d := s.WithDefaults()
	var ids []string
	for i := range d.Drives {
		ids = append(ids, d.Drives[i].ID)
		if rl, ok := u.Drives[d.Drives[i].ID]; ok {
			s.Drives[i].ID, s.Drives[i].RateLimiter = d.Drives[i].ID, &rl
			delete(u.Drives, d.Drives[i].ID)
		}
	}
	for id := range u.Drives {
		return usagef("--drive-limit %s: the vm has no drive %s (its drives: %s; a base image's root drive cannot be limited at run, use 'smartvm update')", id, id, strings.Join(ids, ", "))
	}
	if len(u.Interfaces) > 0 && s.Network == nil {
		return usagef("--nic-limit needs --net")
	}
	if s.Network != nil {
		s.Network.NICs = d.Network.NICs
		ids = ids[:0]
		for i, nic := range s.Network.NICs {
			ids = append(ids, nic.ID)
			if l, ok := u.Interfaces[nic.ID]; ok {
				s.Network.NICs[i].RxRateLimiter, s.Network.NICs[i].TxRateLimiter = l.Rx, l.Tx
				delete(u.Interfaces, nic.ID)
			}
		}
		for id := range u.Interfaces {
			return usagef("--nic-limit %s: the vm has no NIC %s (its NICs: %s)", id, id, strings.Join(ids, ", "))
		}
	}
	return nil
}
