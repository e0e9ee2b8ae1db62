//go:build linux

package netnstest

import (
	"bufio"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TrackConnections makes conntrack follow the namespace's traffic, as a
// host's firewall with "ct state" rules does (a fresh namespace tracks
// nothing until something asks for it).
func TrackConnections(t *testing.T) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Name: "hostfw", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "input", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xff, 0xff, 0xff}, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Counter{},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("host firewall with ct state: %v", err)
	}
}

// TCPStates counts the namespace's conntrack entries for TCP connections
// to port by their original source address and TCP state ("TIME_WAIT",
// "CLOSE", ...), as nf_conntrack lists them in /proc. (The thread's own
// view: /proc/net is the main thread's, which may be a Peer's.)
func TCPStates(t *testing.T, port uint16) map[netip.Addr]map[string]int {
	t.Helper()
	f, err := os.Open("/proc/thread-self/net/nf_conntrack")
	if err != nil {
		t.Fatalf("conntrack entries: %v", err)
	}
	defer f.Close()
	states := make(map[netip.Addr]map[string]int)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ipv4 2 tcp 6 117 TIME_WAIT src=198.18.0.2 dst=198.18.0.1 sport=40000 dport=993 src=... [ASSURED] ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[2] != "tcp" {
			continue
		}
		var src netip.Addr
		var dport int
		for _, kv := range fields[6:] {
			k, v, _ := strings.Cut(kv, "=")
			switch {
			case k == "src" && !src.IsValid():
				src, _ = netip.ParseAddr(v)
			case k == "dport" && dport == 0:
				dport, _ = strconv.Atoi(v)
			}
		}
		if dport != int(port) || !src.IsValid() {
			continue
		}
		if states[src] == nil {
			states[src] = make(map[string]int)
		}
		states[src][fields[5]]++
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("conntrack entries: %v", err)
	}
	return states
}
