package limiter

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// t0 is the clock tests start from.
var t0 = time.Unix(1_800_000_000, 0)

// unlimited is a policy with every limit off, for tests to switch one on.
func unlimited() Policy {
	p := DefaultPolicy()
	p.Limits = Limits{}
	p.Penalty = Penalty{}
	p.KnownGood = KnownGood{}
	for r := range p.Action {
		p.Action[r] = Close
	}
	return p
}

func newLimiter(t *testing.T, p Policy) *Limiter {
	t.Helper()
	l, err := New(p, Options{RateEntries: 1024, FailEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// admitN admits n connections from a and returns the tickets and the first
// refusal (if any).
func admitN(l *Limiter, a netip.Addr, n int, now time.Time) ([]*Ticket, *Decision) {
	var ts []*Ticket
	for i := 0; i < n; i++ {
		t, d := l.Admit(a, now)
		if d.Refused {
			return ts, &d
		}
		ts = append(ts, t)
	}
	return ts, nil
}

func TestConcurrencyLimitsAtNAndNPlus1(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		set    func(*Limits)
		reason Reason
		addrs  func(i int) netip.Addr
	}{
		{"max_per_ip", func(l *Limits) { l.MaxPerIP = 4 }, MaxPerIP, func(int) netip.Addr { return addr("192.0.2.1") }},
		{"max_connections", func(l *Limits) { l.MaxConnections = 4 }, MaxConnections, func(i int) netip.Addr { return addr(fmt.Sprintf("198.51.100.%d", i+1)) }},
		{"max_per_prefix v4 /24", func(l *Limits) { l.MaxPerPrefix = 4 }, MaxPerPrefix, func(i int) netip.Addr { return addr(fmt.Sprintf("192.0.2.%d", i+1)) }},
		{"max_per_prefix v6 /64", func(l *Limits) { l.MaxPerPrefix = 4 }, MaxPerPrefix, func(i int) netip.Addr { return addr(fmt.Sprintf("2001:db8:0:1:%x::1", i+1)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := unlimited()
			tt.set(&p.Limits)
			l := newLimiter(t, p)
			var tickets []*Ticket
			for i := 0; i < 4; i++ {
				tk, d := l.Admit(tt.addrs(i), now)
				if d.Refused {
					t.Fatalf("connection %d of 4 refused: %v", i+1, d.Reason)
				}
				tickets = append(tickets, tk)
			}
			if _, d := l.Admit(tt.addrs(4), now); !d.Refused || d.Reason != tt.reason {
				t.Fatalf("5th: %+v, want refusal by %v", d, tt.reason)
			}
			tickets[0].Release()
			if _, d := l.Admit(tt.addrs(4), now); d.Refused {
				t.Fatalf("after a release: refused by %v", d.Reason)
			}
		})
	}
}

func TestIPv4MappedIsIPv4(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 1
	l := newLimiter(t, p)
	if _, d := l.Admit(addr("192.0.2.7"), time.Now()); d.Refused {
		t.Fatal(d)
	}
	if _, d := l.Admit(addr("::ffff:192.0.2.7"), time.Now()); !d.Refused || d.Reason != MaxPerIP {
		t.Fatalf("mapped address counted apart: %+v", d)
	}
}

func TestIPv6PrefixAggregatesAndOtherPrefixesUnaffected(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerPrefix = 2
	l := newLimiter(t, p)
	now := time.Now()
	l.Admit(addr("2001:db8:1:2::a"), now)
	l.Admit(addr("2001:db8:1:2:ffff::b"), now)
	if _, d := l.Admit(addr("2001:db8:1:2:1234:5678:9abc:def0"), now); !d.Refused {
		t.Fatal("third address in the same /64 admitted")
	}
	if _, d := l.Admit(addr("2001:db8:1:3::a"), now); d.Refused {
		t.Fatal("neighbouring /64 refused")
	}
	p.IPv6Prefix = 48
	l.SetPolicy(p)
	if got := l.Policy().PrefixOf(addr("2001:db8:1:3::a")).String(); got != "2001:db8:1::/48" {
		t.Fatalf("prefix %s", got)
	}
}

func TestPreauthLimitAndLogin(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 30
	p.Limits.MaxPreauthPerIP = 3
	l := newLimiter(t, p)
	a := addr("192.0.2.9")
	now := time.Now()
	ts, d := admitN(l, a, 3, now)
	if d != nil {
		t.Fatal(d)
	}
	if _, d := l.Admit(a, now); !d.Refused || d.Reason != MaxPreauthPerIP {
		t.Fatalf("4th unauthenticated: %+v", d)
	}
	// Logged-in sessions only count against the looser limit.
	for _, tk := range ts {
		tk.LoggedIn()
	}
	more, d := admitN(l, a, 3, now)
	if d != nil {
		t.Fatalf("after logins: %+v", d)
	}
	if total, pre := l.PerIP(a); total != 6 || pre != 3 {
		t.Fatalf("counts %d/%d", total, pre)
	}
	for _, tk := range append(ts, more...) {
		tk.Release()
	}
	if total, pre := l.PerIP(a); total != 0 || pre != 0 {
		t.Fatalf("counts after release %d/%d", total, pre)
	}
}

func TestPreauthWait(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPreauthPerIP = 1
	p.Action[MaxPreauthPerIP] = Wait
	l := newLimiter(t, p)
	a := addr("192.0.2.10")
	first, _ := l.Admit(a, time.Now())
	second, d := l.Admit(a, time.Now())
	if d.Refused || !second.NeedsWait() {
		t.Fatalf("second: %+v needsWait=%v", d, second.NeedsWait())
	}
	done := make(chan Decision)
	go func() { done <- second.WaitPreauth(context.Background()) }()
	select {
	case <-done:
		t.Fatal("wait returned while the slot is taken")
	case <-time.After(20 * time.Millisecond):
	}
	first.LoggedIn()
	if d := <-done; d.Refused {
		t.Fatalf("wait refused: %+v", d)
	}
	// A waiter whose deadline passes gives everything back.
	third, _ := l.Admit(a, time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := third.WaitPreauth(ctx); !d.Refused || d.Reason != MaxPreauthPerIP || d.Limit != 1 || d.Addr != a {
		t.Fatalf("wait with a done context: %+v, want a max_preauth_per_ip refusal of limit 1", d)
	}
	third.Release()
	if total, _ := l.PerIP(a); total != 2 {
		t.Fatalf("total %d, want 2", total)
	}
}

func TestPerUserIP(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerUserIP = 2
	l := newLimiter(t, p)
	a := addr("192.0.2.11")
	var ts []*Ticket
	for i := 0; i < 3; i++ {
		tk, _ := l.Admit(a, time.Now())
		ts = append(ts, tk)
	}
	for i, user := range []string{"bob", "BOB"} {
		if d := ts[i].ReserveUser(user); d.Refused {
			t.Fatalf("login %d refused", i)
		}
		ts[i].CommitUser(true)
	}
	if d := ts[2].ReserveUser("Bob"); !d.Refused || d.Reason != MaxPerUserIP {
		t.Fatalf("third bob: %+v", d)
	}
	if d := ts[2].ReserveUser("alice"); d.Refused {
		t.Fatal("another user refused")
	}
	ts[2].CommitUser(false) // alice's login failed: the place is given back
	ts[0].Release()
	tk, _ := l.Admit(a, time.Now())
	if d := tk.ReserveUser("bob"); d.Refused {
		t.Fatal("bob refused after one of his sessions ended")
	}
}

func TestOverridesExemptAllowDeny(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 1
	p.Overrides = []Override{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Limits: Limits{MaxPerIP: 3}},
		{Prefix: netip.MustParsePrefix("192.0.2.128/25"), Limits: Limits{MaxPerIP: 5}},
	}
	p.Exempt = []netip.Prefix{netip.MustParsePrefix("198.51.100.25/32")}
	p.Deny = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	l := newLimiter(t, p)
	now := time.Now()
	if _, d := admitN(l, addr("192.0.2.1"), 3, now); d != nil {
		t.Fatalf("override /24: %+v", d)
	}
	if _, d := l.Admit(addr("192.0.2.1"), now); !d.Refused {
		t.Fatal("4th admitted under override 3")
	}
	if _, d := admitN(l, addr("192.0.2.200"), 5, now); d != nil {
		t.Fatalf("most specific override: %+v", d)
	}
	if _, d := admitN(l, addr("198.51.100.25"), 50, now); d != nil {
		t.Fatalf("exempt address refused: %+v", d)
	}
	if _, d := l.Admit(addr("203.0.113.5"), now); !d.Refused || d.Reason != Deny {
		t.Fatalf("denied address: %+v", d)
	}
	p.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	l.SetPolicy(p)
	if _, d := l.Admit(addr("198.51.100.1"), now); !d.Refused || d.Reason != NotAllowed {
		t.Fatalf("outside the allow list: %+v", d)
	}
}

func TestRateLimitWithPassedClock(t *testing.T) {
	p := unlimited()
	p.Limits.RatePerIP = Rate{Burst: 3, Per: time.Minute}
	l := newLimiter(t, p)
	t0 := time.Unix(1_800_000_000, 0)
	a := addr("192.0.2.20")
	for i := 0; i < 3; i++ {
		tk, d := l.Admit(a, t0)
		if d.Refused {
			t.Fatalf("burst connection %d refused", i)
		}
		tk.Release()
	}
	if _, d := l.Admit(a, t0); !d.Refused || d.Reason != RatePerIP {
		t.Fatalf("4th in the burst: %+v", d)
	}
	// One token per 20 s.
	if _, d := l.Admit(a, t0.Add(19*time.Second)); !d.Refused {
		t.Fatal("token refilled early")
	}
	if tk, d := l.Admit(a, t0.Add(20*time.Second)); d.Refused {
		t.Fatal("token not refilled after 20s")
	} else {
		tk.Release()
	}
}

func TestPrefixRateCountsNeighbours(t *testing.T) {
	p := unlimited()
	p.Limits.RatePerPrefix = Rate{Burst: 2, Per: time.Minute}
	l := newLimiter(t, p)
	t0 := time.Unix(1_800_000_000, 0)
	for _, a := range []string{"192.0.2.1", "192.0.2.2"} {
		tk, d := l.Admit(addr(a), t0)
		if d.Refused {
			t.Fatalf("%s refused", a)
		}
		tk.Release()
	}
	if _, d := l.Admit(addr("192.0.2.3"), t0); !d.Refused || d.Reason != RatePerPrefix {
		t.Fatalf("third address of the /24: %+v", d)
	}
	if _, d := l.Admit(addr("192.0.3.1"), t0); d.Refused {
		t.Fatal("another /24 refused")
	}
}

func TestRateTableBounded(t *testing.T) {
	rt := newRateTable(numShards * 4)
	now := time.Now()
	for i := 0; i < 10000; i++ {
		rt.allow(addrKey(addr(fmt.Sprintf("10.%d.%d.1", i/250, i%250))), Rate{Burst: 1, Per: time.Hour}, now)
	}
	if n := rt.Len(); n > numShards*4 {
		t.Fatalf("rate table holds %d keys, bound %d", n, numShards*4)
	}
}

func TestDryRun(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 1
	p.Limits.MaxPreauthPerIP = 1
	p.DryRun[MaxPerIP] = true
	p.DryRun[MaxPreauthPerIP] = true
	l := newLimiter(t, p)
	a := addr("192.0.2.30")
	l.Admit(a, time.Now())
	tk, d := l.Admit(a, time.Now())
	if d.Refused || tk.NeedsWait() {
		t.Fatalf("dry-run refused or made it wait: %+v", d)
	}
	if d.WouldRefuse != 1<<MaxPerIP|1<<MaxPreauthPerIP {
		t.Fatalf("would-refuse mask %b", d.WouldRefuse)
	}
	if total, pre := l.PerIP(a); total != 2 || pre != 2 {
		t.Fatalf("dry-run did not count: %d/%d", total, pre)
	}
}

func TestAuthFailurePenalty(t *testing.T) {
	p := unlimited()
	p.Penalty = Penalty{Failures: 3, MinUsers: 1, Window: 10 * time.Minute, BanTime: 10 * time.Minute, Delay: time.Second, MaxDelay: 2 * time.Second}
	l := newLimiter(t, p)
	a := addr("192.0.2.40")
	t0 := time.Unix(1_800_000_000, 0)
	tk, _ := l.Admit(a, t0)
	var delays []time.Duration
	var ban *Ban
	for i := 0; i < 3; i++ {
		d, b := tk.LoginFailed(t0.Add(time.Duration(i)*time.Second), "u", 0)
		delays = append(delays, d)
		if b != nil {
			ban = b
		}
	}
	if fmt.Sprint(delays) != "[0s 1s 2s]" {
		t.Fatalf("delays %v", delays)
	}
	if ban == nil || ban.Failures != 3 || ban.Key != netip.MustParsePrefix("192.0.2.40/32") {
		t.Fatalf("ban %+v", ban)
	}
	if _, d := l.Admit(a, t0.Add(time.Minute)); !d.Refused || d.Reason != Banned {
		t.Fatalf("banned address admitted: %+v", d)
	}
	if _, d := l.Admit(addr("192.0.2.41"), t0.Add(time.Minute)); d.Refused {
		t.Fatal("neighbour refused by a per-address ban")
	}
	if _, d := l.Admit(a, t0.Add(11*time.Minute)); d.Refused {
		t.Fatal("ban outlived ban_time")
	}
	// Failures outside the window do not add up.
	tk2, _ := l.Admit(addr("192.0.2.42"), t0)
	tk2.LoginFailed(t0, "u", 0)
	tk2.LoginFailed(t0.Add(time.Second), "u", 0)
	if _, b := tk2.LoginFailed(t0.Add(11*time.Minute), "u", 0); b != nil {
		t.Fatal("failures from an old window banned")
	}
	// Unban.
	tk3, _ := l.Admit(addr("192.0.2.43"), t0)
	for i := 0; i < 3; i++ {
		tk3.LoginFailed(t0, "u", 0)
	}
	if len(l.Bans(t0)) != 1 || !l.Unban(netip.MustParsePrefix("192.0.2.43/32")) {
		t.Fatalf("bans %v", l.Bans(t0))
	}
	if _, d := l.Admit(addr("192.0.2.43"), t0); d.Refused {
		t.Fatal("unbanned address refused")
	}
}

func TestReloadKeepsCountersAndNeverCloses(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 5
	l := newLimiter(t, p)
	a := addr("192.0.2.50")
	ts, _ := admitN(l, a, 5, time.Now())
	p.Limits.MaxPerIP = 2
	if err := l.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	if total, _ := l.PerIP(a); total != 5 {
		t.Fatalf("reload lost counters: %d", total)
	}
	if _, d := l.Admit(a, time.Now()); !d.Refused {
		t.Fatal("new connection admitted over the lowered limit")
	}
	for _, tk := range ts[:4] {
		tk.Release()
	}
	if _, d := l.Admit(a, time.Now()); d.Refused {
		t.Fatal("refused below the lowered limit")
	}
	bad := p
	bad.IPv4Prefix = 40
	if l.SetPolicy(bad) == nil || l.Policy().Limits.MaxPerIP != 2 {
		t.Fatal("bad policy accepted or replaced the good one")
	}
}

// A successful login gives back the rate tokens its connection spent,
// once; a connection that never logs in keeps them spent.
func TestLoginRefundsRateTokens(t *testing.T) {
	for _, perPrefix := range []bool{false, true} {
		p := unlimited()
		r := Rate{Burst: 3, Per: time.Minute}
		reason := RatePerIP
		if perPrefix {
			p.Limits.RatePerPrefix, reason = r, RatePerPrefix
		} else {
			p.Limits.RatePerIP = r
		}
		l := newLimiter(t, p)
		// Each address of the /24 in turn, so the prefix case spreads.
		from := func(i int) netip.Addr {
			if perPrefix {
				return addr(fmt.Sprintf("192.0.2.%d", 100+i))
			}
			return addr("192.0.2.100")
		}
		for i := 0; i < 30; i++ { // 30 sessions in a second, each logged in
			tk, d := l.Admit(from(i), t0)
			if d.Refused {
				t.Fatalf("prefix=%v: session %d refused by %v", perPrefix, i, d.Reason)
			}
			tk.LoginSucceeded(t0, fmt.Sprint("u", i))
			tk.LoginSucceeded(t0, fmt.Sprint("u", i)) // a second call refunds nothing
			tk.Release()
		}
		// Three connections that do not log in spend the burst.
		for i := 0; i < 3; i++ {
			if _, d := l.Admit(from(i), t0); d.Refused {
				t.Fatalf("prefix=%v: silent connection %d refused", perPrefix, i)
			}
		}
		if _, d := l.Admit(from(3), t0); !d.Refused || d.Reason != reason {
			t.Fatalf("prefix=%v: 4th silent connection: %+v", perPrefix, d)
		}
	}
}
