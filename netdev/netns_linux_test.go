package netdev

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/smartvm/smartvm/internal/testutil"
)

// testNetns is a network namespace a test created and entered (testutil.EnterNetns), with a
// netlink handle in it.
type testNetns struct {
	f    *os.File
	Path string // opens the namespace (for InNetns) while the test runs
	h    *netlink.Handle
}

// enterTestNetns moves the test's goroutine into a new, empty network namespace until the
// test ends: Setup, CreateTAP and the rest then work inside it, and nothing reaches the
// host's namespace, which must gain no smv device. It skips the test when not root or when
// namespaces cannot be made.
func enterTestNetns(t testing.TB) *testNetns {
	t.Helper()
	n := testutil.EnterNetns(t, Prefix)
	h, err := nsHandle(n.File)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &testNetns{f: n.File, Path: n.Path, h: h}
}

// addUplink adds a device "upl0" with 10.99.0.1/24 and a default route through it, to stand
// for the host's uplink: one end of a veth pair whose other end is in the same namespace, so
// nothing sent to it leaves the namespace.
func (ns *testNetns) addUplink(t testing.TB) {
	t.Helper()
	testutil.NeedUplink(t)
	ns.requireNAT(t)
}

// requireNAT skips the test unless the kernel's nftables can masquerade: it adds and deletes
// a masquerade rule in the test's namespace.
func (ns *testNetns) requireNAT(t testing.TB) {
	t.Helper()
	c := ns.nft(t)
	tb := c.AddTable(natTable())
	c.AddRule(masqRule(c.AddChain(postChain(tb)), netip.MustParsePrefix("10.98.0.0/30"), "upl0", "probe"))
	err := c.Flush()
	c.DelTable(tb)
	if derr := c.Flush(); err == nil && derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Skipf("the kernel's nftables cannot masquerade (nf_tables, nft_nat, nft_masq): %v", err)
	}
}

// checkClean fails the test if the namespace holds a smv device or smartvm's nftables table,
// or if the state directory holds a lease or record, or nsDir a namespace.
func (ns *testNetns) checkClean(t testing.TB, dir, nsDir string) {
	t.Helper()
	if l := testutil.LinksWithPrefix(t, Prefix); len(l) > 0 {
		t.Errorf("devices left behind: %v", l)
	}
	if ns.hasTable(t) {
		t.Errorf("nftables table %s left behind", TableName)
	}
	for _, sub := range []string{"leases", "networks"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			t.Errorf("%s/%s left behind", sub, e.Name())
		}
	}
	if nsDir != "" {
		ents, _ := os.ReadDir(nsDir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), Prefix) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	}
}

func (ns *testNetns) nft(t testing.TB) *nftables.Conn {
	t.Helper()
	c, err := nftConn(ns.f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (ns *testNetns) hasTable(t testing.TB) bool {
	t.Helper()
	tables, err := ns.nft(t).ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == TableName })
}

// ruleComments returns the comments of the rules in chain of smartvm's table in the namespace
// f.
func ruleComments(t testing.TB, f *os.File, chain string) []string {
	t.Helper()
	c, err := nftConn(f)
	if err != nil {
		t.Fatal(err)
	}
	rules, _, err := tableRules(c, chain)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rules {
		out = append(out, ruleComment(r))
	}
	slices.Sort(out)
	return out
}

// readSysctl reads a file under /proc/sys/net in the namespace f.
func readSysctl(t testing.TB, f *os.File, name string) string {
	t.Helper()
	var b []byte
	err := inNetns(f, func() error {
		var err error
		b, err = os.ReadFile("/proc/sys/net/" + name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
