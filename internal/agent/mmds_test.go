package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// fakeMMDS answers as Firecracker's metadata service does (notes §3.16): V2 wants a session
// token from PUT /latest/api/token (TTL header 1-21600) on every GET; V1 before v1.13 knows
// no token call; Accept: application/json gives JSON, anything else (or imdsCompat) IMDS
// text: an object's keys, one per line, or a leaf's value.
type fakeMMDS struct {
	data       map[string]any
	v1         bool
	imdsCompat bool
}

const fakeToken = "c2Vzc2lvbi10b2tlbg=="

func (f *fakeMMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		ttl := r.Header.Get("X-metadata-token-ttl-seconds")
		switch {
		case f.v1:
			http.Error(w, "Not allowed HTTP method.", http.StatusMethodNotAllowed)
		case r.Method != http.MethodPut:
			http.Error(w, "Not allowed HTTP method.", http.StatusMethodNotAllowed)
		case ttl == "" || ttl == "0":
			http.Error(w, "Token time to live value not found.", http.StatusBadRequest)
		default:
			fmt.Fprint(w, fakeToken)
		}
		return
	}
	if !f.v1 && r.Header.Get("X-metadata-token") != fakeToken {
		http.Error(w, "No MMDS token provided. Use `X-metadata-token` header to specify the session token.", http.StatusUnauthorized)
		return
	}
	var v any = f.data
	for _, el := range strings.Split(strings.Trim(r.URL.Path, "/"), "/") {
		m, ok := v.(map[string]any)
		if !ok || m[el] == nil {
			http.Error(w, "Resource not found: "+r.URL.Path+".", http.StatusNotFound)
			return
		}
		v = m[el]
	}
	if r.Header.Get("Accept") == "application/json" && !f.imdsCompat {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	switch v := v.(type) {
	case map[string]any:
		for k := range v {
			fmt.Fprintln(w, k)
		}
	case string:
		fmt.Fprint(w, v)
	default:
		http.Error(w, "Cannot retrieve value. The value has an unsupported type.", http.StatusBadRequest)
	}
}

func networkData(n map[string]any) map[string]any {
	return map[string]any{agentwire.MMDSKey: map[string]any{"network": n}}
}

func TestMMDSClient(t *testing.T) {
	t.Parallel()
	full := map[string]any{"address": "172.16.0.2/30", "gateway": "172.16.0.1", "dns": "1.1.1.1 9.9.9.9", "hostname": "web-1", "device": "eth0"}
	for _, tc := range []struct {
		name string
		mmds *fakeMMDS
		ok   bool
		want string // error
	}{
		{"v2 json", &fakeMMDS{data: networkData(full)}, true, ""},
		{"v1 without token calls", &fakeMMDS{data: networkData(full), v1: true}, true, ""},
		{"imds text", &fakeMMDS{data: networkData(full), imdsCompat: true}, true, ""},
		{"no key", &fakeMMDS{data: map[string]any{"latest": map[string]any{}}}, false, ""},
		{"bad address", &fakeMMDS{data: networkData(map[string]any{"address": "172.16.0.2"})}, false, `address "172.16.0.2": want an IPv4 address with its prefix length`},
		{"v6 address", &fakeMMDS{data: networkData(map[string]any{"address": "fd00::2/64"})}, false, "want an IPv4 address"},
		{"bad gateway", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "gateway": "x"})}, false, `gateway "x"`},
		{"too many dns", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "dns": "1.1.1.1 1.0.0.1 8.8.8.8 8.8.4.4"})}, false, "at most 3 addresses"},
		{"bad dns", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "dns": "1.1.1.1\nnameserver 6.6.6.6"})}, false, "IP addresses separated by spaces"},
		{"bad hostname", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "hostname": "a b"})}, false, `hostname "a b"`},
		{"long hostname", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "hostname": strings.Repeat("a", 65)})}, false, "at most 64 bytes"},
		{"bad device", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "device": "../eth0"})}, false, `device "../eth0"`},
		{"oversized", &fakeMMDS{data: networkData(map[string]any{"address": "10.0.0.2/24", "hostname": strings.Repeat("a", mmdsMaxBody)})}, false, "over 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tc.mmds)
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			g, ok, err := newMMDSClient(srv.Listener.Addr().String(), 5*time.Second, nil).network(ctx)
			switch {
			case tc.want != "":
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("network: %v, want an error containing %q", err, tc.want)
				}
				return
			case err != nil:
				t.Fatal(err)
			case ok != tc.ok:
				t.Fatalf("found: %v, want %v", ok, tc.ok)
			case !ok:
				return
			}
			if g.addr.String() != "172.16.0.2/30" || g.gateway.String() != "172.16.0.1" || g.hostname != "web-1" || g.dev != "eth0" ||
				string(g.resolvConf()) != "nameserver 1.1.1.1\nnameserver 9.9.9.9\n" {
				t.Errorf("network %+v, resolv.conf %q", g, g.resolvConf())
			}
		})
	}
}

func TestMMDSAddrArg(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmdline, addr string
		explicit      bool
		err           string
	}{
		{"console=ttyS0", agentwire.MMDSDefaultAddr, false, ""},
		{"smartvm.mmds=169.254.170.2", "169.254.170.2", true, ""},
		{"smartvm.mmds=off", "", true, ""},
		{"smartvm.mmds=10.0.0.1", "", true, "link-local"},
	} {
		addr, explicit, err := mmdsAddr(tc.cmdline)
		if addr != tc.addr || explicit != tc.explicit || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("mmdsAddr(%q) = %q, %v, %v", tc.cmdline, addr, explicit, err)
		}
	}
}

// validHostname and validDevice accept exactly what the patterns they replace accepted.
func TestNameChecksMatchPatterns(t *testing.T) {
	host := regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$`)
	dev := regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	cases := []string{"", "a", "-", "a-", "-a", "a-b", "web-1", "a.b", "a..b", ".a", "a.", "a.-b", "a_b", "a b", "é",
		"eth0", "br.0", "../eth0", "..", "x\n", strings.Repeat("a", 15), strings.Repeat("a", 16),
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 63) + ".b", "A9.z-Z.0"}
	for _, c := range cases {
		if got, want := validHostname(c), host.MatchString(c); got != want {
			t.Errorf("validHostname(%q) = %v, the pattern says %v", c, got, want)
		}
		if got, want := validDevice(c), dev.MatchString(c); got != want {
			t.Errorf("validDevice(%q) = %v, the pattern says %v", c, got, want)
		}
	}
}
