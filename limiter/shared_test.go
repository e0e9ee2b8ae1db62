package limiter

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeShared is an in-memory Shared for several limiters ("nodes"): the
// counts per node, as package cluster keeps them in Redis. Rates and
// failures are not modelled.
type fakeShared struct {
	mu     sync.Mutex
	counts map[string]map[string]int // key -> node -> n
	fail   bool
	calls  int
	downs  int
	unbans []Ban // received by Publish
	lifted []Ban
	// batches are the Release calls' releases, in order; admitRel the
	// releases carried by Admit calls.
	batches  [][]SharedRelease
	admitRel []SharedRelease
	// block, if set, holds Release calls until it is closed; entered
	// gets a value as each one starts. flying counts Release calls in
	// progress; Publish fails the test (badPublish) if one is.
	block      chan struct{}
	entered    chan struct{}
	flying     int
	badPublish bool
	// good are the known-good addresses and prefixes handed over
	// (KnownGood), by node.
	good []sharedGood
	// timers are the release flushes the nodes scheduled (the stepped
	// clock of ReleaseWindow): fire runs them.
	tmu    sync.Mutex
	timers []func()
}

// fire runs the release flushes scheduled so far, as if ReleaseWindow
// had passed, and reports how many ran.
func (f *fakeShared) fire() int {
	f.tmu.Lock()
	ts := f.timers
	f.timers = nil
	f.tmu.Unlock()
	for _, t := range ts {
		t()
	}
	return len(ts)
}

type fakeNode struct {
	*fakeShared
	node string
}

func newFake() *fakeShared { return &fakeShared{counts: map[string]map[string]int{}} }

func (f *fakeShared) sum(k string) int {
	n := 0
	for _, v := range f.counts[k] {
		n += v
	}
	return n
}

func (f *fakeShared) add(k, node string, d int) {
	if f.counts[k] == nil {
		f.counts[k] = map[string]int{}
	}
	f.counts[k][node] += d
}

var errFake = errors.New("shared state down")

func (n fakeNode) Admit(_ context.Context, q *SharedAdmit) (SharedResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls++
	if n.fail {
		return SharedResult{}, errFake
	}
	for _, r := range q.Releases {
		n.admitRel = append(n.admitRel, *r)
		n.apply(r)
	}
	a := "a:" + q.Addr.String()
	if m := q.Limits.MaxConnections; m > 0 && n.sum("total") >= m {
		return SharedResult{Refused: true, Reason: MaxConnections, Limit: m}, nil
	}
	if m := q.Limits.MaxPerIP; !q.Exempt && m > 0 && n.sum(a) >= m {
		return SharedResult{Refused: true, Reason: MaxPerIP, Limit: m}, nil
	}
	n.add("total", n.node, 1)
	if !q.Exempt {
		n.add(a, n.node, 1)
	}
	return SharedResult{}, nil
}

func (n fakeNode) Release(_ context.Context, qs []*SharedRelease) error {
	n.mu.Lock()
	n.calls++
	n.flying++
	block, entered := n.block, n.entered
	n.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		<-block
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.flying--
	if n.fail {
		return errFake
	}
	var b []SharedRelease
	for _, q := range qs {
		b = append(b, *q)
		n.apply(q)
	}
	n.batches = append(n.batches, b)
	return nil
}

// apply gives back one release's places; the caller holds mu.
func (n fakeNode) apply(q *SharedRelease) {
	if q.Total {
		n.add("total", n.node, -1)
	}
	if q.IP {
		n.add("a:"+q.Addr.String(), n.node, -1)
	}
}

func (n fakeNode) Login(context.Context, *SharedLogin) (SharedResult, error) {
	return SharedResult{}, nil
}
func (n fakeNode) Succeeded(context.Context, *SharedLogin) error { return nil }
func (n fakeNode) Failure(context.Context, *SharedFailure) (SharedFailureResult, error) {
	return SharedFailureResult{}, errFake
}
func (n fakeNode) Ban(context.Context, Ban) error                      { return nil }
func (n fakeNode) Unban(context.Context, netip.Prefix) error           { return nil }
func (n fakeNode) UnbanUser(context.Context, netip.Addr, string) error { return nil }
func (n fakeNode) Down(error) {
	n.mu.Lock()
	n.downs++
	n.mu.Unlock()
}

type sharedGood struct {
	node  string
	k     netip.Prefix
	until time.Time
}

func (n fakeNode) KnownGood(k netip.Prefix, until time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.good = append(n.good, sharedGood{n.node, k, until})
}

// Publish replaces the node's share, as package cluster does.
func (n fakeNode) Publish(_ context.Context, s *Snapshot) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail {
		return errFake
	}
	if n.flying > 0 {
		n.badPublish = true
	}
	n.unbans = append(n.unbans, s.Unbans...)
	n.lifted = append(n.lifted, s.Lifted...)
	for _, m := range n.counts {
		delete(m, n.node)
	}
	n.add("total", n.node, s.Total)
	for a, c := range s.Addrs {
		n.add("a:"+a.String(), n.node, c)
	}
	return nil
}

func sharedNodes(t *testing.T, f *fakeShared, p Policy, names ...string) []*Limiter {
	var ls []*Limiter
	for _, name := range names {
		l := newLimiter(t, p)
		l.SetShared(fakeNode{f, name}, 250*time.Millisecond, 50*time.Millisecond)
		l.cl.rq.after = func(_ time.Duration, fn func()) {
			f.tmu.Lock()
			f.timers = append(f.timers, fn)
			f.tmu.Unlock()
		}
		if err := l.Republish(context.Background(), t0); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// admitShared is Admit and Confirm, as the proxy calls them.
func admitShared(l *Limiter, a netip.Addr, now time.Time) (*Ticket, Decision) {
	tk, d := l.Admit(a, now)
	if d.Refused {
		return nil, d
	}
	d = tk.Confirm(context.Background(), now, d)
	if d.Refused {
		return nil, d
	}
	return tk, d
}

func TestSharedLimitExactAcrossNodes(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 4
	f := newFake()
	nodes := sharedNodes(t, f, p, "n1", "n2", "n3")
	a := addr("192.0.2.70")
	var held []*Ticket
	for i := 0; i < 12; i++ {
		if tk, _ := admitShared(nodes[i%3], a, t0); tk != nil {
			held = append(held, tk)
		}
	}
	if len(held) != 4 || f.sum("a:192.0.2.70") != 4 {
		t.Fatalf("admitted %d (shared count %d), want 4", len(held), f.sum("a:192.0.2.70"))
	}
	held[0].Release()
	f.fire()
	if f.sum("a:192.0.2.70") != 3 {
		t.Fatalf("shared count %d after a release", f.sum("a:192.0.2.70"))
	}
}

// A refusal by the shared count is remembered: the next attempts from the
// address cost no call until the hold passes (clock stepped) or a
// connection of this node from there ends.
func TestSharedRefusalRememberedWithoutRoundTrip(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 2
	f := newFake()
	n := sharedNodes(t, f, p, "n1", "n2")
	a := addr("192.0.2.71")
	t1, _ := admitShared(n[1], a, t0)
	admitShared(n[0], a, t0)
	if tk, d := admitShared(n[0], a, t0); tk != nil || d.Reason != MaxPerIP {
		t.Fatalf("3rd: %+v", d)
	}
	calls := f.calls
	for i := 0; i < 100; i++ {
		if _, d := n[0].Admit(a, t0.Add(100*time.Millisecond)); !d.Refused || d.Reason != MaxPerIP {
			t.Fatalf("remembered refusal: %+v", d)
		}
	}
	if f.calls != calls {
		t.Fatalf("%d calls for refusals of a known offender, want 0", f.calls-calls)
	}
	if hits, _, _ := n[0].SharedStats(); hits != 100 {
		t.Fatalf("cache hits %d", hits)
	}
	// n2's session ends: n1 learns it only by asking, after the hold.
	t1.Release()
	f.fire()
	if _, d := n[0].Admit(a, t0.Add(200*time.Millisecond)); !d.Refused {
		t.Fatal("hold forgotten early")
	}
	if tk, d := admitShared(n[0], a, t0.Add(300*time.Millisecond)); tk == nil {
		t.Fatalf("after the hold: %+v", d)
	}
}

// The shared state fails: local limits at once (this node's own counts),
// one Down per outage; Republish restores the shared counts to this
// node's truth and switches back.
func TestSharedDownLocalLimitsAndRepublish(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 4
	f := newFake()
	n := sharedNodes(t, f, p, "n1", "n2")
	a := addr("192.0.2.72")
	for i := 0; i < 4; i++ {
		admitShared(n[i%2], a, t0)
	}
	f.fail = true
	var local []*Ticket
	for i := 0; i < 5; i++ {
		if tk, _ := admitShared(n[0], a, t0); tk != nil {
			local = append(local, tk)
		}
	}
	if len(local) != 2 || n[0].SharedUp() {
		t.Fatalf("down: admitted %d from an address n1 holds 2 of (want 2, local max 4), up=%v", len(local), n[0].SharedUp())
	}
	if f.downs != 1 {
		t.Fatalf("Down called %d times, want once", f.downs)
	}
	local[0].Release() // while down: local only
	f.fail = false
	if err := n[0].Republish(context.Background(), t0); err != nil {
		t.Fatal(err)
	}
	if !n[0].SharedUp() {
		t.Fatal("not up after Republish")
	}
	if got := f.counts["a:192.0.2.72"]["n1"]; got != 3 {
		t.Fatalf("n1's republished share %d, want 3", got)
	}
	if tk, _ := admitShared(n[1], a, t0); tk != nil {
		t.Fatal("admitted over the shared limit after recovery (5 held)")
	}
	local[1].Release()
	f.fire()
	if got := f.counts["a:192.0.2.72"]["n1"]; got != 2 {
		t.Fatalf("n1's share %d after a release, want 2", got)
	}
}

// Without SetShared nothing changes: Confirm returns Admit's decision.
func TestConfirmWithoutSharedIsANoOp(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 1
	l := newLimiter(t, p)
	tk, d := l.Admit(addr("192.0.2.73"), t0)
	if d2 := tk.Confirm(context.Background(), t0, d); d2 != d {
		t.Fatalf("Confirm changed %+v to %+v", d, d2)
	}
	var zero Ticket
	zero.CommitUser(false)
	zero.Release()
}

// An operator's unban while the shared state is down reaches it with the
// next Republish, once, so the stored ban does not come back; with it go
// the bans it lifted here, with their Until (the address's own and a user
// ban on it), so that other nodes still holding them do not store them
// again when they republish.
func TestSharedUnbanWhileDownIsRepublished(t *testing.T) {
	f := newFake()
	n := sharedNodes(t, f, unlimited(), "n1")[0]
	k := netip.MustParsePrefix("192.0.2.80/32")
	n.ApplyBan(Ban{Key: k, Until: t0.Add(time.Hour)})
	n.ApplyBan(Ban{Key: k, User: "bob", Until: t0.Add(2 * time.Hour)})
	f.fail = true
	admitShared(n, addr("192.0.2.81"), t0) // goes down
	if n.SharedUp() {
		t.Fatal("still up")
	}
	if !n.Unban(k) {
		t.Fatal("no ban lifted")
	}
	f.fail = false
	n.Republish(context.Background(), t0)
	n.Republish(context.Background(), t0)
	if len(f.unbans) != 1 || f.unbans[0].Key != k {
		t.Fatalf("unbans published %+v, want %s once", f.unbans, k)
	}
	slices.SortFunc(f.lifted, func(a, b Ban) int { return strings.Compare(a.User, b.User) })
	want := []Ban{{Key: k, Until: t0.Add(time.Hour)}, {Key: k, User: "bob", Until: t0.Add(2 * time.Hour)}}
	if len(f.lifted) != 2 || f.lifted[0].Key != want[0].Key || !f.lifted[0].Until.Equal(want[0].Until) ||
		f.lifted[1].User != "bob" || !f.lifted[1].Until.Equal(want[1].Until) {
		t.Fatalf("lifted bans published %+v, want %+v once", f.lifted, want)
	}
}

// The known-good tier learned on one node reaches the others: without
// it, a node that never saw the office's users log in (restarted, or not
// chosen by round robin) checks the ordinary limits against the shared
// count, which the office's sessions elsewhere exceed, and refuses it.
func TestSharedKnownGoodReachesOtherNodes(t *testing.T) {
	f := newFake()
	nodes := sharedNodes(t, f, tierPolicy(), "n1", "n2", "n3")
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	a := addr("192.0.2.90")
	for i, u := range []string{"ann", "bea", "cid"} {
		loginShared(t, n1, a, u, t0.Add(time.Duration(i)*time.Minute))
		f.fire()
	}
	now := t0.Add(3 * time.Minute)
	want := map[netip.Prefix]bool{netip.MustParsePrefix("192.0.2.90/32"): true, netip.MustParsePrefix("192.0.2.0/24"): true}
	if len(f.good) != 2 || !want[f.good[0].k] || !want[f.good[1].k] || f.good[0].node != "n1" {
		t.Fatalf("handed over %v, want the address and its /24 once each, by n1", f.good)
	}
	if u := f.good[0].until; !u.Equal(t0.Add(2*time.Minute + time.Hour)) {
		t.Errorf("until %v, want a window after the third login", u)
	}
	// More logins within the hour's 24th hand nothing new over.
	loginShared(t, n1, a, "dan", now)
	if len(f.good) != 2 {
		t.Fatalf("a fourth login handed over again: %v", f.good)
	}
	for _, g := range f.good {
		n2.LearnKnownGood(g.k, g.until, now)
	}
	// The office holds 3 sessions on n1: over the ordinary 2.
	var hold []*Ticket
	for i := 0; i < 3; i++ {
		tk, d := admitShared(n1, a, now)
		if tk == nil {
			t.Fatalf("n1 refused the office's session %d: %v", i, d.Reason)
		}
		hold = append(hold, tk)
	}
	if tk, d := admitShared(n2, a, now); tk == nil {
		t.Errorf("n2, which learned the tier, refused the office: %v", d.Reason)
	} else {
		hold = append(hold, tk)
	}
	if tk, d := admitShared(n3, a, now); tk != nil || d.Reason != MaxPerIP {
		t.Errorf("n3, which learned nothing, = %v %v; want the ordinary limit's refusal (the case sharing fixes)", tk != nil, d.Reason)
	}
	// A login on n2 does not hand the learned time back.
	loginShared(t, n2, a, "eve", now)
	if len(f.good) != 2 {
		t.Errorf("n2 handed back what it learned: %v", f.good[2:])
	}
	for _, tk := range hold {
		tk.Release()
	}
	// Another prefix length than this node's, and times past, are ignored.
	n3.LearnKnownGood(netip.MustParsePrefix("192.0.2.0/16"), now.Add(time.Hour), now)
	n3.LearnKnownGood(netip.MustParsePrefix("192.0.2.90/32"), now.Add(-time.Second), now)
	if n3.KnownGood(a, now) {
		t.Error("n3 learned a /16 or a time past")
	}
	// A time far ahead is cut to a window from now.
	far := addr("192.0.2.91")
	n3.LearnKnownGood(netip.PrefixFrom(far, 32), now.Add(1000*time.Hour), now)
	if k := n3.KnownGoodOf(far, now); !k.AddrUntil.Equal(now.Add(time.Hour)) {
		t.Errorf("learned until %v, want a window (1h) from now", k.AddrUntil)
	}
}

func loginShared(t *testing.T, l *Limiter, a netip.Addr, user string, now time.Time) {
	t.Helper()
	tk, d := admitShared(l, a, now)
	if tk == nil {
		t.Fatalf("%s refused: %v", user, d.Reason)
	}
	tk.LoginSucceeded(now, user)
	tk.LoggedIn()
	tk.Release()
}
