package cli

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// binaryUnits are the size suffixes parseMiB accepts, in bytes. As in docker's go-units
// (RAMInBytes), K, M, G and T are powers of 1024 whether written K, KB or KiB, in any case.
var binaryUnits = map[string]float64{
	"b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// parseMiB reads a memory size in MiB: a bare number is MiB ("512"); a number with a unit
// ("512M", "1G", "1GiB", "1.5g", "2097152k") is converted, and must come to a whole number of
// MiB.
func parseMiB(s string) (int, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || math.IsInf(n, 0) {
		return 0, fmt.Errorf("%q is not a size: want a number of MiB such as 512, or one with a unit such as 512M, 1G or 1GiB", s)
	}
	mul := float64(1 << 20)
	if unit != "" {
		var ok bool
		if mul, ok = binaryUnits[unit]; !ok {
			return 0, fmt.Errorf("%q: unknown unit %q: use K, M, G or T (KiB, MiB, GiB, TiB; KB, MB... mean the same)", s, t[i:])
		}
	}
	mib := n * mul / (1 << 20)
	if mib != math.Trunc(mib) {
		return 0, fmt.Errorf("%q is not a whole number of MiB", s)
	}
	if mib > math.MaxInt32 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int(mib), nil
}

// mibFlag is a flag that holds a size in MiB and accepts units (parseMiB).
type mibFlag struct{ v *int }

func (f mibFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return strconv.Itoa(*f.v)
}

func (f mibFlag) Set(s string) error {
	n, err := parseMiB(s)
	if err != nil {
		return err
	}
	*f.v = n
	return nil
}

func (mibFlag) Type() string { return "size" }
