package netdev

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) that holds smartvm's NAT rules, in the host
// namespace and in each VM namespace. netdev creates it with the first rule and deletes it with
// the last; it changes no other table.
const TableName = "smartvm"

// Chain names in TableName.
const (
	chainPost = "postrouting"
	chainPre  = "prerouting"
)

func natTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

func postChain(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{Name: chainPost, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
}

func preChain(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}
}

func nftConn(ns *os.File) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", permErr(err))
	}
	return c, nil
}

// comment encodes a rule comment the way the nft tool does, so `nft list ruleset` shows it.
func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// ifnameData is an interface name as nftables compares it: NUL-padded to IFNAMSIZ.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// matchIf matches the input (iif) or output interface name.
func matchIf(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(name)},
	}
}

// matchAddr matches the IPv4 source (offset 12) or destination (offset 16) against p.
func matchAddr(offset uint32, p netip.Prefix) []expr.Any {
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: net.CIDRMask(p.Bits(), 32), Xor: make([]byte, 4)})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

// masqRule: oifname <oif> ip saddr <src> masquerade comment <tag>.
func masqRule(ch *nftables.Chain, src netip.Prefix, oif, tag string) *nftables.Rule {
	e := slices.Concat(matchIf(expr.MetaKeyOIFNAME, oif), matchAddr(12, src), []expr.Any{&expr.Masq{}})
	return &nftables.Rule{Table: ch.Table, Chain: ch, Exprs: e, UserData: comment(tag)}
}

// dnatRule: iifname <iif> ip daddr <dst> dnat to <to> comment <tag>.
func dnatRule(ch *nftables.Chain, iif string, dst, to netip.Addr, tag string) *nftables.Rule {
	e := slices.Concat(matchIf(expr.MetaKeyIIFNAME, iif), matchAddr(16, netip.PrefixFrom(dst, 32)), []expr.Any{
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	})
	return &nftables.Rule{Table: ch.Table, Chain: ch, Exprs: e, UserData: comment(tag)}
}

// addHostNAT adds, in one transaction, a masquerade rule per source of n, creating the table
// and chain if this is the first VM to use them. The caller holds the pool lock.
func addHostNAT(ns *os.File, n *Network) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	// Re-adding an existing base chain costs the kernel a full hook update (milliseconds), so
	// the table and chain are added only when the chain is missing; if it vanished meanwhile
	// (another state directory's last VM ended), the add is retried with them.
	_, err = c.ListChain(natTable(), chainPost)
	create := err != nil
	for {
		t, ch := natTable(), postChain(natTable())
		if create {
			t = c.AddTable(t)
			ch = c.AddChain(postChain(t))
		}
		for _, src := range n.NAT.Sources {
			c.AddRule(masqRule(ch, src, n.NAT.Uplink, natTag(n.Owner, src)))
		}
		err := c.Flush()
		if err == nil {
			return nil
		}
		if create {
			return fmt.Errorf("add NAT rules to nftables table %s: %w", TableName, permErr(err))
		}
		create = true
	}
}

// removeHostNAT deletes the rules of n, then the table if no rule of another VM is left in
// it. Rules already gone are not an error. The caller holds the pool lock.
func removeHostNAT(ns *os.File, n *Network) error {
	tags := map[string]bool{}
	for _, src := range n.NAT.Sources {
		tags[natTag(n.Owner, src)] = true
	}
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	rules, found, err := tableRules(c, chainPost)
	if err != nil || !found {
		return err
	}
	left := 0
	for _, r := range rules {
		if !tags[ruleComment(r)] {
			left++
			continue
		}
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("delete NAT rule %q: %w", ruleComment(r), err)
		}
	}
	if left == 0 {
		c.DelTable(natTable())
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete NAT rules from nftables table %s: %w", TableName, permErr(err))
	}
	return nil
}

// tableRules returns the rules of chain in TableName, and whether the table exists.
func tableRules(c *nftables.Conn, chain string) ([]*nftables.Rule, bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, false, fmt.Errorf("list nftables tables: %w", permErr(err))
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return nil, false, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, true, fmt.Errorf("list nftables chains: %w", permErr(err))
	}
	if !slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name == TableName && ch.Name == chain }) {
		return nil, true, nil
	}
	t := natTable()
	rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil {
		return nil, true, fmt.Errorf("list rules of nftables chain %s %s: %w", TableName, chain, permErr(err))
	}
	return rules, true, nil
}

// addNetnsNAT sets up the VM namespace's own table: traffic of the guests leaving through the
// veth is masqueraded to the namespace's veth address, and traffic the host sends to that
// address is forwarded to the first NIC's guest. Clones that share guest addresses are thus
// told apart by their namespaces' veth addresses.
func addNetnsNAT(ns *os.File, n *Network) error {
	c, err := nftConn(ns)
	if err != nil {
		return err
	}
	t := c.AddTable(natTable())
	post := c.AddChain(postChain(t))
	pre := c.AddChain(preChain(t))
	for _, nic := range n.NICs {
		c.AddRule(masqRule(post, nic.Subnet, n.Netns.PeerVeth, natTag(n.Owner, nic.Subnet)))
	}
	if len(n.NICs) > 0 {
		c.AddRule(dnatRule(pre, n.Netns.PeerVeth, n.Netns.PeerIP, n.NICs[0].GuestIP, deviceAlias(n.Owner)))
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add NAT rules in namespace %s: %w", n.Netns.Name, permErr(err))
	}
	return nil
}

// enableForwarding turns on IPv4 forwarding in the namespace ns, if it is off.
func enableForwarding(ns *os.File) error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	return inNetns(ns, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if bytes.Equal(bytes.TrimSpace(b), []byte("1")) {
			return nil
		}
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable IP forwarding: %w", permErr(err))
		}
		return nil
	})
}

// findUplink returns the NAT uplink: name if that device exists, else (name empty) the device
// of the IPv4 default route with the lowest metric. Errors: ErrUplinkNotFound.
func findUplink(h *netlink.Handle, name string) (string, error) {
	if name != "" {
		_, err := h.LinkByName(name)
		if errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, unix.ENODEV) {
			return "", fmt.Errorf("NAT uplink %s: %w: no such network device in the host namespace; name an existing one (see `ip link`), or leave it empty to use the default route's", name, ErrUplinkNotFound)
		}
		if err != nil {
			return "", fmt.Errorf("NAT uplink %s: %w", name, err)
		}
		return name, nil
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", fmt.Errorf("NAT uplink: list routes: %w", err)
	}
	best, idx := -1, 0
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		li := r.LinkIndex
		if li == 0 && len(r.MultiPath) > 0 {
			li = r.MultiPath[0].LinkIndex
		}
		if li != 0 && (best < 0 || r.Priority < best) {
			best, idx = r.Priority, li
		}
	}
	if best < 0 {
		return "", fmt.Errorf("NAT uplink: %w: there is no IPv4 default route to detect it from; name the device that reaches the outside (see `ip route`)", ErrUplinkNotFound)
	}
	link, err := h.LinkByIndex(idx)
	if err != nil {
		return "", fmt.Errorf("NAT uplink: device %d of the default route: %w", idx, err)
	}
	return link.Attrs().Name, nil
}
