package fcapi

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a Firecracker release, such as 1.14.2 or 1.17.0-dev. The zero Version means
// "unknown".
type Version struct {
	Major, Minor, Patch int
	// Pre is the pre-release label without its leading '-', such as "dev"; empty for a release.
	Pre string
}

// ParseVersion reads a Firecracker version as GET /version ("1.14.2"), `firecracker --version`
// ("Firecracker v1.14.2") or a tag ("v1.14.2") spell it. A pre-release label ("1.17.0-dev") is
// kept; build metadata after '+' is dropped.
func ParseVersion(s string) (Version, error) {
	in := s
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "Firecracker"); ok {
		s = strings.TrimSpace(rest)
	}
	s = strings.TrimPrefix(s, "v")
	s, _, _ = strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 || (hasPre && pre == "") {
		return Version{}, fmt.Errorf("parse Firecracker version %q: want MAJOR.MINOR.PATCH[-PRE], such as 1.14.2", in)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || (len(p) > 1 && p[0] == '0') {
			return Version{}, fmt.Errorf("parse Firecracker version %q: %q is not a version number", in, p)
		}
		nums[i] = n
	}
	return Version{Major: nums[0], Minor: nums[1], Patch: nums[2], Pre: pre}, nil
}

// String returns the version without a leading 'v', such as "1.14.2" or "1.17.0-dev".
func (v Version) String() string {
	s := strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// IsZero reports whether v is the zero Version ("unknown").
func (v Version) IsZero() bool { return v == Version{} }

// Compare orders versions by semantic-versioning precedence: it returns -1 when v is older than
// w, 0 when they are equal and +1 when v is newer. A pre-release is older than the release it
// precedes (1.17.0-dev < 1.17.0).
func (v Version) Compare(w Version) int {
	for _, d := range [3]int{v.Major - w.Major, v.Minor - w.Minor, v.Patch - w.Patch} {
		if d != 0 {
			return sign(d)
		}
	}
	return comparePre(v.Pre, w.Pre)
}

// AtLeast reports whether v is w or newer.
func (v Version) AtLeast(w Version) bool { return v.Compare(w) >= 0 }

func comparePre(a, b string) int {
	switch {
	case a == b:
		return 0
	case a == "":
		return 1
	case b == "":
		return -1
	}
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if c := compareIdent(as[i], bs[i]); c != 0 {
			return c
		}
	}
	return sign(len(as) - len(bs))
}

// compareIdent orders two pre-release identifiers: numeric ones numerically and before
// alphanumeric ones, the rest in ASCII order.
func compareIdent(a, b string) int {
	an, aErr := strconv.Atoi(a)
	bn, bErr := strconv.Atoi(b)
	switch {
	case aErr == nil && bErr == nil:
		return sign(an - bn)
	case aErr == nil:
		return -1
	case bErr == nil:
		return 1
	}
	return strings.Compare(a, b)
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
