package fcapi

import (
	"slices"
	"testing"
)

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"1.14.2":               {1, 14, 2, ""},
		"v1.14.2":              {1, 14, 2, ""},
		"Firecracker v1.14.2":  {1, 14, 2, ""},
		"Firecracker v1.7.0\n": {1, 7, 0, ""},
		"1.17.0-dev":           {1, 17, 0, "dev"},
		"v1.17.0-rc.1+abc":     {1, 17, 0, "rc.1"},
	} {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.14", "1.14.2.1", "x.1.2", "1.-1.0", "1.01.0", "1.2.3-", "Firecracker", "v"} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", in, v)
		}
	}
}

func TestVersionString(t *testing.T) {
	for _, s := range []string{"1.14.2", "1.17.0-dev", "0.0.0"} {
		v, err := ParseVersion(s)
		if err != nil || v.String() != s {
			t.Errorf("%s: String() = %q, %v", s, v.String(), err)
		}
	}
	if !(Version{}).IsZero() || (Version{Patch: 1}).IsZero() {
		t.Error("IsZero")
	}
}

func TestVersionCompare(t *testing.T) {
	// Ascending per semantic versioning.
	order := []string{"1.7.0", "1.10.1", "1.14.0-alpha", "1.14.0-alpha.1", "1.14.0-alpha.beta", "1.14.0-beta.2", "1.14.0-beta.11", "1.14.0-rc.1", "1.14.0", "1.14.2", "1.17.0-dev", "1.17.0", "2.0.0"}
	var vs []Version
	for _, s := range order {
		vs = append(vs, mustVersion(t, s))
	}
	for i := range vs {
		for j := range vs {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := vs[i].Compare(vs[j]); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", vs[i], vs[j], got, want)
			}
			if got := vs[i].AtLeast(vs[j]); got != (i >= j) {
				t.Errorf("%v.AtLeast(%v) = %v", vs[i], vs[j], got)
			}
		}
	}
	shuffled := slices.Clone(vs)
	slices.Reverse(shuffled)
	slices.SortFunc(shuffled, Version.Compare)
	if !slices.Equal(shuffled, vs) {
		t.Errorf("sorted %v", shuffled)
	}
}

func mustVersion(t testing.TB, s string) Version {
	t.Helper()
	v, err := ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
