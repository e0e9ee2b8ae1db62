package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nft is the backend: one inet table with four interval sets with timeouts
// (ban4, ban6; keep4, keep6) and a chain at raw prerouting with, first,
// per family
//
//	meta nfproto ipv4 ip saddr @keep4 accept
//
// (addresses never dropped: the drop rules below are skipped for them,
// whatever prefix of theirs is in ban4), then per family and port
//
//	meta nfproto ipv4 meta l4proto tcp tcp dport PORT
//	tcp flags & (syn|ack) == syn ip saddr @ban4 counter drop
//
// (ip6 saddr @ban6 for IPv6): a SYN that would open a connection, before
// conntrack makes an entry for it. An accept ends only this chain: other
// tables' chains still see the packet.
type nft struct {
	claim net.Listener // holds the table's name in this network namespace (claimTable)
	conn  *nftables.Conn
	name  string
	ports []uint16
	table *nftables.Table
	set4  *nftables.Set
	set6  *nftables.Set
	keep4 *nftables.Set
	keep6 *nftables.Set
	chain *nftables.Chain
}

// keepRules is the number of rules before the drop rules.
const keepRules = 2

func openBackend(name string, ports []uint16) (backend, error) {
	claim, err := claimTable(name)
	if err != nil {
		return nil, err
	}
	c, err := nftables.New()
	if err != nil {
		claim.Close()
		return nil, fmt.Errorf("netlink: %w", err)
	}
	n := &nft{claim: claim, conn: c, name: name, ports: ports}
	// A table left by a run that did not stop cleanly goes first (no
	// running imapgate holds its name: claimTable).
	n.conn.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	n.conn.Flush() // no such table: an error to ignore
	if err := n.create(); err != nil {
		claim.Close()
		return nil, explain(err)
	}
	return n, nil
}

// TableHeld reports, as an error naming the fix, that a running imapgate
// holds table name in this network namespace (claimTable); nil if none
// does now.
func TableHeld(name string) error {
	ln, err := claimTable(name)
	if err != nil {
		return err
	}
	ln.Close()
	return nil
}

// claimTable holds table name for this process in its network namespace,
// where nftables tables live, until the listener is closed or the process
// ends however it ends: an abstract unix socket, whose names are per
// namespace and freed by the kernel. A second imapgate given the same
// kernel.table had taken the first one's table for one left by a crash and
// replaced it with rules for its own ports; the first dropped nothing on
// its ports until it noticed the table gone.
func claimTable(name string) (net.Listener, error) {
	ln, err := net.Listen("unix", "@imapgate/nftables/"+name)
	if errors.Is(err, unix.EADDRINUSE) {
		return nil, fmt.Errorf("table inet %s is in use by another imapgate in this network namespace: give each instance its own kernel.table", name)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming table %s: %w", name, err)
	}
	return ln, nil
}

// explain names the usual causes of a failure to use nftables.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w (imapgate needs CAP_NET_ADMIN for [kernel] nftables)", err)
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w (no nf_tables in this kernel?): %w", ErrUnsupported, err)
	}
	return err
}

func (n *nft) create() error {
	n.table = n.conn.AddTable(&nftables.Table{Name: n.name, Family: nftables.TableFamilyINet})
	n.set4 = &nftables.Set{Table: n.table, Name: "ban4", KeyType: nftables.TypeIPAddr, Interval: true, HasTimeout: true}
	n.set6 = &nftables.Set{Table: n.table, Name: "ban6", KeyType: nftables.TypeIP6Addr, Interval: true, HasTimeout: true}
	n.keep4 = &nftables.Set{Table: n.table, Name: "keep4", KeyType: nftables.TypeIPAddr, Interval: true, HasTimeout: true}
	n.keep6 = &nftables.Set{Table: n.table, Name: "keep6", KeyType: nftables.TypeIP6Addr, Interval: true, HasTimeout: true}
	for _, s := range []*nftables.Set{n.set4, n.set6, n.keep4, n.keep6} {
		if err := n.conn.AddSet(s, nil); err != nil {
			return err
		}
	}
	accept := nftables.ChainPolicyAccept
	n.chain = n.conn.AddChain(&nftables.Chain{
		Name: "prerouting", Table: n.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept,
	})
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain, Exprs: keepRule(unix.NFPROTO_IPV4, 12, 4, n.keep4)})
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain, Exprs: keepRule(unix.NFPROTO_IPV6, 8, 16, n.keep6)})
	for _, port := range n.ports {
		n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain, Exprs: dropRule(unix.NFPROTO_IPV4, 12, 4, n.set4, port)})
		n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain, Exprs: dropRule(unix.NFPROTO_IPV6, 8, 16, n.set6, port)})
	}
	return n.conn.Flush()
}

// keepRule accepts (ends this chain for) a source address in set.
func keepRule(family byte, off, size uint32, set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// dropRule matches family, TCP, the port, a SYN without ACK and a source
// address (at offset off, len bytes, in the network header) in set.
func dropRule(family byte, off, size uint32, set *nftables.Set, port uint16) []expr.Any {
	p := binary.BigEndian.AppendUint16(nil, port)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// ensure checks that the table, its chain and its rules are there, and
// makes them again if not.
func (n *nft) ensure() (bool, error) {
	rules, err := n.conn.GetRules(n.table, n.chain)
	if err == nil && len(rules) == keepRules+2*len(n.ports) {
		return false, nil
	}
	n.conn.DelTable(n.table)
	n.conn.Flush()
	if err := n.create(); err != nil {
		return false, explain(err)
	}
	return true, nil
}

// elements are p as an interval [start, end) with the timeout on its
// start; a prefix that reaches the top of the address space has no end.
func elements(p netip.Prefix, timeout time.Duration) []nftables.SetElement {
	start := p.Masked().Addr().AsSlice()
	els := []nftables.SetElement{{Key: start, Timeout: timeout}}
	if end, ok := rangeEnd(p); ok {
		els = append(els, nftables.SetElement{Key: end, IntervalEnd: true})
	}
	return els
}

func (n *nft) setFor(p netip.Prefix, keep bool) *nftables.Set {
	switch {
	case keep && p.Addr().Is4():
		return n.keep4
	case keep:
		return n.keep6
	case p.Addr().Is4():
		return n.set4
	}
	return n.set6
}

func (n *nft) add(p netip.Prefix, timeout time.Duration) error { return n.put(p, timeout, false) }
func (n *nft) del(p netip.Prefix) error                        { return n.remove(p, false) }

// keep adds p to the keep sets; timeout 0: none (the set's default).
func (n *nft) keep(p netip.Prefix, timeout time.Duration) error { return n.put(p, timeout, true) }
func (n *nft) unkeep(p netip.Prefix) error                      { return n.remove(p, true) }

func (n *nft) put(p netip.Prefix, timeout time.Duration, keep bool) error {
	els := elements(p, timeout.Round(time.Millisecond))
	if err := n.conn.SetAddElements(n.setFor(p, keep), els); err != nil {
		return err
	}
	return n.conn.Flush()
}

func (n *nft) remove(p netip.Prefix, keep bool) error {
	els := elements(p, 0)
	if err := n.conn.SetDeleteElements(n.setFor(p, keep), els); err != nil {
		return err
	}
	return n.conn.Flush()
}

func (n *nft) counters() (packets, bytes uint64, err error) {
	rules, err := n.conn.GetRules(n.table, n.chain)
	if err != nil {
		return 0, 0, err
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				packets += c.Packets
				bytes += c.Bytes
			}
		}
	}
	return packets, bytes, nil
}

func (n *nft) close() error {
	n.conn.DelTable(n.table)
	err := n.conn.Flush()
	n.conn.CloseLasting()
	n.claim.Close() // after the table is gone: the name is free for another
	return err
}

// Probe reports whether this process can use nftables, as Open would need,
// without changing anything: it lists the tables over netlink (nfnetlink
// wants CAP_NET_ADMIN even to read). The error names the usual cause.
func Probe() error {
	c, err := nftables.New()
	if err != nil {
		return explain(err) // the library says "netlink receive: …" itself, as at run time
	}
	defer c.CloseLasting()
	if _, err := c.ListTables(); err != nil {
		return explain(err) // the library says "netlink receive: …" itself, as at run time
	}
	return nil
}
