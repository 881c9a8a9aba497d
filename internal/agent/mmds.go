package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/smartvm/smartvm/internal/agentwire"
)

// Bounds on what the agent reads from MMDS: the host user writes the store, but a wrong or
// oversized value must not make the agent allocate, hang or write anything odd.
const (
	mmdsMaxBody  = 64 << 10
	mmdsMaxToken = 512
	mmdsMaxDNS   = 3
	mmdsTokenTTL = "60"
)

// validHostname reports whether v is dot-separated labels of 1 to 64 letters, digits and
// '-', none starting or ending with '-'. (A check, not a regexp: this package is linked into
// every smartvm command, and compiling the pattern at start-up cost each of them.)
func validHostname(v string) bool {
	for label := range strings.SplitSeq(v, ".") {
		if label == "" || len(label) > 64 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !isAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}

// validDevice reports whether v is 1 to 15 letters, digits, '_', '.' or '-'.
func validDevice(v string) bool {
	if v == "" || len(v) > 15 {
		return false
	}
	for _, c := range []byte(v) {
		if !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// guestNet is a validated MMDSNetwork.
type guestNet struct {
	addr     netip.Prefix
	gateway  netip.Addr // invalid: none
	dns      []netip.Addr
	hostname string
	dev      string
}

// checkMMDSNetwork validates what MMDS says about the network.
func checkMMDSNetwork(m agentwire.MMDSNetwork) (guestNet, error) {
	var g guestNet
	bad := func(field, v, want string) error {
		return fmt.Errorf("mmds %s: %s %q: want %s", agentwire.MMDSNetworkPath, field, v, want)
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(m.Address))
	if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 32 || p.Addr().IsUnspecified() || p.Addr().IsMulticast() {
		return g, bad("address", m.Address, "an IPv4 address with its prefix length, such as 172.16.0.2/30")
	}
	g.addr = p
	if v := strings.TrimSpace(m.Gateway); v != "" {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
			return g, bad("gateway", m.Gateway, "an IPv4 address")
		}
		g.gateway = a
	}
	fields := strings.Fields(m.DNS)
	if len(fields) > mmdsMaxDNS {
		return g, bad("dns", m.DNS, fmt.Sprintf("at most %d addresses", mmdsMaxDNS))
	}
	for _, f := range fields {
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			return g, bad("dns", m.DNS, "IP addresses separated by spaces")
		}
		g.dns = append(g.dns, a)
	}
	if v := m.Hostname; v != "" {
		if len(v) > 64 || !validHostname(v) {
			return g, bad("hostname", v, "a host name of letters, digits, '-' and '.', at most 64 bytes")
		}
		g.hostname = v
	}
	g.dev = "eth0"
	if v := m.Device; v != "" {
		if !validDevice(v) || v == "." || v == ".." {
			return g, bad("device", v, "an interface name of at most 15 letters, digits, '_', '.' or '-'")
		}
		g.dev = v
	}
	return g, nil
}

// resolvConf is the /etc/resolv.conf of the DNS servers.
func (g guestNet) resolvConf() []byte {
	var b strings.Builder
	for _, d := range g.dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return []byte(b.String())
}

// mmdsClient reads the metadata service at addr, HOST:PORT.
type mmdsClient struct {
	addr string
	hc   *http.Client
}

// dialTCP is how an mmdsClient connects: tests connect from a network namespace.
type dialTCP func(ctx context.Context, addr string) (net.Conn, error)

func newMMDSClient(addr string, timeout time.Duration, dial dialTCP) *mmdsClient {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, addr)
		},
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 16 << 10,
		ResponseHeaderTimeout:  timeout,
	}
	return &mmdsClient{addr: addr, hc: &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a request and returns the status, at most max bytes of the body (a longer body
// is an error) and whether the body is JSON.
func (c *mmdsClient) do(ctx context.Context, method, path string, hdr map[string]string, max int) (int, []byte, bool, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.addr+path, nil)
	if err != nil {
		return 0, nil, false, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, false, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, int64(max)+1))
	if err != nil {
		return 0, nil, false, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if len(body) > max {
		return 0, nil, false, fmt.Errorf("%s %s: the answer is over %d bytes", method, path, max)
	}
	ct, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	return res.StatusCode, body, ct == "application/json", nil
}

// network reads and checks the network key. It returns (zero, false, nil) when the service
// answers but has no such key.
func (c *mmdsClient) network(ctx context.Context) (guestNet, bool, error) {
	hdr := map[string]string{}
	// V2: a session token. V1 services (before v1.13) may refuse the PUT: go on without.
	st, tok, _, err := c.do(ctx, http.MethodPut, "/latest/api/token", map[string]string{"X-metadata-token-ttl-seconds": mmdsTokenTTL}, mmdsMaxToken)
	if err != nil {
		return guestNet{}, false, fmt.Errorf("mmds at %s: %w", c.addr, err)
	}
	if st == http.StatusOK {
		t := strings.TrimSpace(string(tok))
		if t == "" || strings.ContainsAny(t, "\r\n") {
			return guestNet{}, false, fmt.Errorf("mmds at %s: a malformed session token", c.addr)
		}
		hdr["X-metadata-token"] = t
	}
	get := func(path string) (int, []byte, bool, error) {
		h := map[string]string{"Accept": "application/json"}
		for k, v := range hdr {
			h[k] = v
		}
		return c.do(ctx, http.MethodGet, path, h, mmdsMaxBody)
	}
	st, body, isJSON, err := get(agentwire.MMDSNetworkPath)
	switch {
	case err != nil:
		return guestNet{}, false, fmt.Errorf("mmds at %s: %w", c.addr, err)
	case st == http.StatusNotFound:
		return guestNet{}, false, nil
	case st != http.StatusOK:
		return guestNet{}, false, fmt.Errorf("mmds at %s: GET %s: status %d", c.addr, agentwire.MMDSNetworkPath, st)
	}
	var m agentwire.MMDSNetwork
	if isJSON {
		if err := json.Unmarshal(body, &m); err != nil {
			return guestNet{}, false, fmt.Errorf("mmds %s: %w", agentwire.MMDSNetworkPath, err)
		}
	} else {
		// IMDS text (imds_compat): one GET per leaf.
		for name, dst := range map[string]*string{"address": &m.Address, "gateway": &m.Gateway, "dns": &m.DNS, "hostname": &m.Hostname, "device": &m.Device} {
			st, body, _, err := get(agentwire.MMDSNetworkPath + "/" + name)
			switch {
			case err != nil:
				return guestNet{}, false, fmt.Errorf("mmds at %s: %w", c.addr, err)
			case st == http.StatusOK:
				*dst = strings.TrimSpace(string(body))
			case st != http.StatusNotFound:
				return guestNet{}, false, fmt.Errorf("mmds at %s: GET %s/%s: status %d", c.addr, agentwire.MMDSNetworkPath, name, st)
			}
		}
	}
	g, err := checkMMDSNetwork(m)
	if err != nil {
		return guestNet{}, false, err
	}
	return g, true, nil
}

// mmdsAddr is the service's address from the kernel command line: explicit says it was given
// (smartvm.mmds=ADDR), and an empty addr means MMDS is off.
func mmdsAddr(cmdline string) (addr string, explicit bool, err error) {
	v := kernelArg(cmdline, agentwire.MMDSKernelArg)
	switch v {
	case "off":
		return "", true, nil
	case "":
		return agentwire.MMDSDefaultAddr, false, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() || !a.IsLinkLocalUnicast() {
		return "", true, errors.New(agentwire.MMDSKernelArg + "=" + v + ": want a link-local IPv4 address (169.254.x.y) or off")
	}
	return v, true, nil
}
