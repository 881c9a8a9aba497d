package uffd

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRegions(t *testing.T) {
	const file = 8 << 20
	good := `[{"base_host_virt_addr":1073741824,"size":4194304,"offset":4194304,"page_size":4096,"page_size_kib":4096}]`
	rs, err := ParseRegions([]byte(good), file)
	if err != nil || len(rs) != 1 || rs[0] != (Region{Base: 1 << 30, Size: 4 << 20, Offset: 4 << 20, PageSize: 4096}) {
		t.Fatalf("v1.14 regions: %+v, %v", rs, err)
	}
	// v1.7 sends page_size_kib only (in bytes); two regions come back sorted.
	v17 := `[{"base_host_virt_addr":8388608,"size":4096,"offset":4096,"page_size_kib":4096},{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]`
	if rs, err := ParseRegions([]byte(v17), file); err != nil || len(rs) != 2 || rs[0].Base != 4096 {
		t.Fatalf("v1.7 regions: %+v, %v", rs, err)
	}
	region := func(fields string) string { return "[{" + fields + "}]" }
	for _, c := range []struct{ name, msg, want string }{
		{"empty", ``, "regions"},
		{"not an array", `{}`, "regions"},
		{"no regions", `[]`, "0 regions"},
		{"trailing data", good + `[]`, "data after"},
		{"too many", "[" + strings.Repeat(`{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096},`, MaxRegions) + `{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`, "regions, want"},
		{"missing size", region(`"base_host_virt_addr":4096,"offset":0,"page_size":4096`), "lacks"},
		{"no page size", region(`"base_host_virt_addr":4096,"size":4096,"offset":0`), "no page size"},
		{"page sizes differ", region(`"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4`), "differ"},
		{"odd page size", region(`"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4`), "page size 4"},
		{"zero size", region(`"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096`), "positive multiple"},
		{"partial page", region(`"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096`), "positive multiple"},
		{"null base", region(`"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096`), "not page aligned"},
		{"unaligned base", region(`"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096`), "not page aligned"},
		{"unaligned offset", region(`"base_host_virt_addr":4096,"size":4096,"offset":1,"page_size":4096`), "offset 1"},
		{"past the file", region(`"base_host_virt_addr":4096,"size":8392704,"offset":0,"page_size":4096`), "beyond the end"},
		{"offset past the file", region(`"base_host_virt_addr":4096,"size":4096,"offset":8388608,"page_size":4096`), "beyond the end"},
		{"offset overflow", region(`"base_host_virt_addr":4096,"size":8192,"offset":18446744073709547520,"page_size":4096`), "beyond the end"},
		{"address overflow", region(`"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096`), "beyond any user address"},
		{"negative", region(`"base_host_virt_addr":-4096,"size":4096,"offset":0,"page_size":4096`), "regions"},
		{"overlap", `[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]`, "overlap"},
		{"huge", strings.Repeat(" ", MaxMessage+1), "more than"},
	} {
		_, err := ParseRegions([]byte(c.msg), file)
		if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrHandshake with %q", c.name, err, c.want)
		}
	}
}

func TestExtents(t *testing.T) {
	e := extents{{Off: 4096, Len: 4096}, {Off: 16384, Len: 4096}} // [4096, 8192) and [16384, 20480)
	for _, c := range []struct {
		off, n int64
		want   bool
	}{{0, 4096, false}, {4096, 4096, true}, {8192, 8192, false}, {12288, 8192, true}, {20480, 4096, false}, {0, 1 << 20, true}} {
		if got := e.data(c.off, c.n); got != c.want {
			t.Errorf("data(%d, %d) = %v", c.off, c.n, got)
		}
	}
}
