package kernel

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"

	"imapgate/courierlog"
	"imapgate/internal/netnstest"
	"imapgate/limiter"
)

// Real-kernel tests: each runs in a network namespace it makes itself
// (netnstest), never in the host's, and touches only that namespace's
// ruleset.

// listener accepts on 127.0.0.1, or on the test's side of a peer
// namespace, and counts what it accepted.
type listener struct {
	ln       net.Listener
	port     uint16
	accepted atomic.Int64
	peer     *netnstest.Peer
}

func listen(t *testing.T) *listener { return listenOn(t, "127.0.0.1", nil) }

func listenOn(t *testing.T, host string, peer *netnstest.Peer) *listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port), peer: peer}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return l
}

// connects reports whether a connection from src gets through within 1 s
// (from the peer namespace if the listener has one).
func (l *listener) connects(src string) bool {
	before := l.accepted.Load()
	var c net.Conn
	var err error
	if l.peer != nil {
		c, err = l.peer.Dial(netip.MustParseAddr(src), l.ln.Addr().String(), time.Second)
	} else {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: time.Second}
		c, err = d.Dial("tcp", l.ln.Addr().String())
	}
	if err != nil {
		return false
	}
	c.Close()
	for deadline := time.Now().Add(2 * time.Second); l.accepted.Load() == before && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // the accept loop counts it
	}
	return true
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) log(_ courierlog.Priority, m string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, m)
}

func (l *logLines) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.lines {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// bans is a limiter's ban list a test can change.
type bans struct {
	mu sync.Mutex
	bs []limiter.Ban
}

func (b *bans) set(bs ...limiter.Ban) { b.mu.Lock(); b.bs = bs; b.mu.Unlock() }
func (b *bans) list(now time.Time) []limiter.Ban {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []limiter.Ban
	for _, x := range b.bs {
		if x.Until.After(now) {
			out = append(out, x)
		}
	}
	return out
}

func conntrackCount(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		t.Fatalf("conntrack count: %v", err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func tableExists(t *testing.T, name string) bool {
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ts {
		if x.Name == name {
			return true
		}
	}
	return false
}

// A banned address's new connections are dropped in the kernel, before
// conntrack (the count does not move), and never reach the listener; the
// rule's counter counts them; they come back when the ban expires, and at
// once when it is lifted. Other addresses are untouched all along.
func TestRealNftablesBanDropsBeforeConntrack(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	// Clients in a namespace of their own, behind a veth: their SYNs reach
	// prerouting first, as a remote client's do.
	peer := netnstest.NewPeer(t, 3)
	banned, other, net24 := peer.Sources[0].String(), peer.Sources[1].String(), peer.Sources[2].String()
	netnstest.TrackConnections(t)
	l := listenOn(t, peer.LocalAddr.String(), peer)
	var b bans
	var logs logLines
	k, err := Open(Options{Ports: []uint16{l.port}, Bans: b.list, Log: logs.log})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if !l.connects(banned) {
		t.Fatal("no connection before any ban")
	}
	now := time.Now()
	b.set(limiter.Ban{Key: netip.PrefixFrom(peer.Sources[0], 32), Until: now.Add(3 * time.Second)},
		limiter.Ban{Key: netip.MustParsePrefix("198.18.0.4/30"), Until: now.Add(time.Hour)})
	k.Sync(now)
	if !logs.has("kernel: dropping new connections from ::ffff:"+banned+" for 3s (banned)") ||
		!logs.has("kernel: dropping new connections from 198.18.0.4/30 for 1h0m0s (banned)") {
		t.Fatalf("log: %q", logs.lines)
	}
	accepted, tracked := l.accepted.Load(), conntrackCount(t)
	for _, src := range []string{banned, net24} {
		if l.connects(src) {
			t.Fatalf("%s: connected while banned", src)
		}
	}
	if got := l.accepted.Load(); got != accepted {
		t.Fatalf("the listener accepted %d connections from banned addresses", got-accepted)
	}
	// A flood of SYNs from the banned address: none is accepted, and
	// conntrack makes no entry for any.
	dst := netip.AddrPortFrom(peer.LocalAddr, l.port)
	if n, err := peer.Flood(peer.Sources[0], dst, 200, 500*time.Millisecond); err != nil || n != 0 {
		t.Fatalf("SYN flood from the banned address: %d connected, %v", n, err)
	}
	if n := conntrackCount(t); n > tracked {
		t.Fatalf("conntrack count grew from %d to %d while banned addresses were dropped", tracked, n)
	}
	if st := k.Stats(); st.Packets < 202 || st.Elements4 != 2 || st.Added[ReasonBan] != 2 {
		t.Fatalf("stats %+v", st)
	}
	if !l.connects(other) {
		t.Fatal("an address outside the bans was dropped")
	}
	// The same flood from an address that is not banned does make entries:
	// the check above proves something.
	if n, err := peer.Flood(peer.Sources[1], dst, 200, 500*time.Millisecond); err != nil || n != 200 {
		t.Fatalf("SYN flood from another address: %d of 200 connected, %v", n, err)
	}
	if n := conntrackCount(t); n < tracked+200 {
		t.Fatalf("conntrack count %d after 200 connections (was %d): the namespace does not track", n, tracked)
	}
	// The element's own timeout ends the drop, imapgate or not.
	time.Sleep(3200 * time.Millisecond)
	if !l.connects(banned) {
		t.Fatal("still dropped after the ban's expiry")
	}
	k.Sync(time.Now())
	if !logs.has("kernel: no longer dropping ::ffff:" + banned + " (expired)") {
		t.Fatalf("log: %q", logs.lines)
	}
	// ctl unban: the limiter forgets the ban, the element goes at once.
	b.set()
	k.Sync(time.Now())
	if !l.connects(net24) || !logs.has("kernel: no longer dropping 198.18.0.4/30 (unbanned)") {
		t.Fatalf("lifted ban still dropped; log %q", logs.lines)
	}
	k.Close()
	if tableExists(t, "imapgate") {
		t.Fatal("table left behind after Close")
	}
}

// An administrator's "nft flush ruleset" (or delete table) is undone at the
// next Sync, members included.
func TestRealNftablesRecreatedAfterFlush(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	l := listen(t)
	var b bans
	var logs logLines
	k, err := Open(Options{Ports: []uint16{l.port}, Bans: b.list, Log: logs.log,
		Keep: func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("127.0.0.96/28")} }})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	b.set(limiter.Ban{Key: netip.MustParsePrefix("::ffff:127.0.0.8/128"), Until: time.Now().Add(time.Hour)})
	k.Sync(time.Now())
	if l.connects("127.0.0.8") {
		t.Fatal("banned address connected")
	}
	c, _ := nftables.New()
	c.FlushRuleset()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if !l.connects("127.0.0.8") {
		t.Fatal("still dropped after the flush: the test proves nothing")
	}
	k.Sync(time.Now())
	if l.connects("127.0.0.8") {
		t.Fatal("not dropped again after Sync")
	}
	if !logs.has("was flushed or deleted; made again with 1 elements (and 1 in the keep sets)") || k.Stats().Recreated != 1 {
		t.Fatalf("log: %q", logs.lines)
	}
}

// A flood of refusals from one address escalates to a kernel drop; an
// address at its limit (refused now and then) does not, and an exempt one
// never does. Dry run adds nothing and says what it would have.
func TestRealNftablesEscalation(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	l := listen(t)
	var logs logLines
	exempt := netip.MustParseAddr("127.0.0.30")
	k, err := Open(Options{Ports: []uint16{l.port}, Escalation: DefaultEscalation, Log: logs.log,
		Exempt: func(a netip.Addr) bool { return a == exempt }})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	now := time.Now()
	for i := 0; i < 101; i++ {
		k.Refused(netip.MustParseAddr("127.0.0.20"), now)
		k.Refused(exempt, now)
	}
	for i := 0; i < 100; i++ { // at the threshold, not over it
		k.Refused(netip.MustParseAddr("127.0.0.21"), now.Add(time.Duration(i)*90*time.Millisecond))
	}
	k.Sync(now)
	if l.connects("127.0.0.20") {
		t.Fatal("the flooder was not dropped")
	}
	for _, src := range []string{"127.0.0.21", "127.0.0.30"} {
		if !l.connects(src) {
			t.Fatalf("%s dropped", src)
		}
	}
	if !logs.has("kernel: dropping new connections from ::ffff:127.0.0.20 for 30s (101 refusals in 10s, level 1)") {
		t.Fatalf("log: %q", logs.lines)
	}
	if m := k.Members(now); len(m) != 1 || m[0].Reason != ReasonEscalation {
		t.Fatalf("members %+v", m)
	}
	k.Close()

	var dry logLines
	k, err = Open(Options{Ports: []uint16{l.port}, Escalation: DefaultEscalation, Log: dry.log, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	for i := 0; i < 101; i++ {
		k.Refused(netip.MustParseAddr("127.0.0.22"), now)
	}
	k.Sync(now)
	if !l.connects("127.0.0.22") || !dry.has("kernel: would drop new connections from ::ffff:127.0.0.22 for 30s") {
		t.Fatalf("dry run: log %q", dry.lines)
	}
}

// Without CAP_NET_ADMIN, Open fails and says what is missing.
func TestRealNftablesWithoutCapability(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{Unprivileged: true}) {
		return
	}
	_, err := Open(Options{Ports: []uint16{993}})
	if err == nil || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("Open without CAP_NET_ADMIN: %v", err)
	}
	t.Logf("Open: %v", err)
}

// A flood spread over 20 addresses of one /24 escalates the /24: its
// other addresses are dropped too, but an exempt address and a known-good
// one in it still connect (the keep sets' accept comes before the drops).
func TestRealNftablesPrefixEscalationSparesKept(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 23) // 198.18.0.2 .. 198.18.0.24, one /24
	flood, bystander, exempt, good := peer.Sources[:20], peer.Sources[20], peer.Sources[21], peer.Sources[22]
	l := listenOn(t, peer.LocalAddr.String(), peer)
	var logs logLines
	k, err := Open(Options{Ports: []uint16{l.port}, Escalation: DefaultEscalation, Log: logs.log,
		Exempt: func(a netip.Addr) bool { return a == exempt },
		Keep:   func() []netip.Prefix { return []netip.Prefix{netip.PrefixFrom(exempt, 32)} }})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	now := time.Now()
	k.Good(good, now.Add(time.Hour))
	for _, a := range flood {
		for i := 0; i <= 100; i++ {
			k.Refused(a, now)
		}
	}
	k.Sync(now)
	if !logs.has("kernel: dropping new connections from 198.18.0.0/24 for 30s (4 of its addresses dropped") {
		t.Fatalf("log: %q", logs.lines)
	}
	for _, src := range []netip.Addr{flood[0], flood[19], bystander} {
		if l.connects(src.String()) {
			t.Fatalf("%s connected inside the dropped /24", src)
		}
	}
	for _, src := range []netip.Addr{exempt, good} {
		if !l.connects(src.String()) {
			t.Fatalf("%s (kept) was dropped with its /24", src)
		}
	}
	if m := k.Members(now); len(m) != 1 || m[0].Reason != ReasonPrefixEscalation {
		t.Fatalf("members %+v", m)
	}
	if kept := k.Kept(); len(kept) != 2 {
		t.Fatalf("kept %v", kept)
	}
}
