package limiter

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// loginAs admits a connection from a at now and records a successful login
// of user; it reports a refusal.
func loginAs(t *testing.T, l *Limiter, a netip.Addr, user string, now time.Time) {
	t.Helper()
	tk, d := l.Admit(a, now)
	if d.Refused {
		t.Fatalf("%s from %s refused: %v", user, a, d.Reason)
	}
	if tk.UserBanned(now, user) {
		t.Fatalf("%s from %s refused by a user ban", user, a)
	}
	tk.LoginSucceeded(now, user)
	tk.LoggedIn()
	tk.Release()
}

// tierPolicy: 2 connections per address and 4 per /24 ordinarily, 5 and
// 10 for known-good ones (3 users within an hour).
func tierPolicy() Policy {
	p := unlimited()
	p.Limits.MaxPerIP, p.Limits.MaxPerPrefix = 2, 4
	p.KnownGood = KnownGood{MinUsers: 3, Window: time.Hour, MaxPerIP: 5, MaxPerPrefix: 10}
	return p
}

// held admits connections from a at now until one is refused, releases
// them, and returns how many were admitted and the refusal's reason.
func held(l *Limiter, a netip.Addr, now time.Time) (int, Reason) {
	ts, d := admitN(l, a, 100, now)
	for _, tk := range ts {
		tk.Release()
	}
	if d == nil {
		return len(ts), NumReasons
	}
	return len(ts), d.Reason
}

// heldPrefix admits two connections from each address of a's /24 after a
// until the prefix limit refuses one, releases them, and returns how many
// were admitted.
func heldPrefix(l *Limiter, a netip.Addr, now time.Time) int {
	var ts []*Ticket
	defer func() {
		for _, tk := range ts {
			tk.Release()
		}
	}()
	b := a.As4()
	for i := 1; i < 50; i++ {
		b[3]++
		for j := 0; j < 2; j++ {
			tk, d := l.Admit(netip.AddrFrom4(b), now)
			if d.Refused {
				return len(ts)
			}
			ts = append(ts, tk)
		}
	}
	return len(ts)
}

func TestKnownGoodTier(t *testing.T) {
	a := addr("192.0.2.90")
	tests := []struct {
		name       string
		logins     []string // one per minute from t0
		check      time.Duration
		wantIP     int // connections a may hold at t0+check
		wantPrefix int // connections the rest of the /24 may hold then
	}{
		{"no logins: ordinary limits", nil, time.Minute, 2, 4},
		{"two users: not yet", []string{"ann", "bea"}, 3 * time.Minute, 2, 4},
		{"one user three times: not distinct", []string{"ann", "ann", "ann"}, 3 * time.Minute, 2, 4},
		{"user names compared case-insensitively", []string{"ann", "ANN", "Ann"}, 3 * time.Minute, 2, 4},
		{"three users: known-good address and prefix", []string{"ann", "bea", "cid"}, 3 * time.Minute, 5, 10},
		{"still known-good just inside the window", []string{"ann", "bea", "cid"}, 61 * time.Minute, 5, 10},
		{"expired a window after the last login", []string{"ann", "bea", "cid"}, 62 * time.Minute, 2, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, tierPolicy())
			for i, u := range tt.logins {
				loginAs(t, l, a, u, t0.Add(time.Duration(i)*time.Minute))
			}
			now := t0.Add(tt.check)
			if good := l.KnownGood(a, now); good != (tt.wantIP == 5) {
				t.Errorf("KnownGood = %v", good)
			}
			if n, r := held(l, a, now); n != tt.wantIP || r != MaxPerIP {
				t.Errorf("address holds %d (then %v), want %d", n, r, tt.wantIP)
			}
			if n := heldPrefix(l, a, now); n != tt.wantPrefix {
				t.Errorf("the /24 holds %d, want %d", n, tt.wantPrefix)
			}
		})
	}
}

// Users spread over more than a window do not make an address known-good;
// an override keeps its limits whatever the tier.
func TestKnownGoodNeedsUsersWithinOneWindow(t *testing.T) {
	l := newLimiter(t, tierPolicy())
	a := addr("192.0.2.92")
	for i, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, a, u, t0.Add(time.Duration(i)*40*time.Minute))
	}
	if n, _ := held(l, a, t0.Add(81*time.Minute)); n != 2 {
		t.Fatalf("users 40 minutes apart made the address known-good: %d", n)
	}

	p := tierPolicy()
	p.Overrides = []Override{{Prefix: netip.MustParsePrefix("192.0.2.93/32"), Limits: Limits{MaxPerIP: 3}}}
	l = newLimiter(t, p)
	b := addr("192.0.2.93")
	for _, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, b, u, t0)
	}
	if n, _ := held(l, b, t0); n != 3 {
		t.Fatalf("override address holds %d, want its override's 3", n)
	}
}

// The tier never gives less than the ordinary limits, and 0 turns it off.
func TestKnownGoodTierIsNeverStricter(t *testing.T) {
	p := tierPolicy()
	p.KnownGood.MaxPerIP = 1 // stricter than the ordinary 2
	l := newLimiter(t, p)
	a := addr("192.0.2.94")
	for _, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, a, u, t0)
	}
	if n, _ := held(l, a, t0); n != 2 {
		t.Fatalf("holds %d, want the ordinary 2", n)
	}
	p = tierPolicy()
	p.KnownGood.MinUsers = 0
	if err := l.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	if n, _ := held(l, a, t0); n != 2 {
		t.Fatalf("tier off: holds %d", n)
	}
	if r := looserRate(Rate{Burst: 60, Per: time.Minute}, Rate{Burst: 10, Per: time.Second}); r.Burst != 60 || r.interval() != int64(100*time.Millisecond) {
		t.Fatalf("looser rate %+v", r)
	}
}

// A reload keeps what the limiter remembers: known-good addresses, bans,
// failures.
func TestReloadKeepsKnownGoodAndBans(t *testing.T) {
	p := tierPolicy()
	p.Penalty = DefaultPolicy().Penalty
	l := newLimiter(t, p)
	a, b := addr("192.0.2.95"), addr("198.51.100.95")
	for _, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, a, u, t0)
	}
	tk, _ := l.Admit(b, t0)
	for i := 0; i < 9; i++ {
		tk.LoginFailed(t0, fmt.Sprint("u", i), 0)
	}
	tk.Release()
	p.Limits.MaxPerIP = 1
	if err := l.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	if n, _ := held(l, a, t0); n != 5 {
		t.Fatalf("after reload the known-good address holds %d", n)
	}
	tk, _ = l.Admit(b, t0)
	if _, ban := tk.LoginFailed(t0, "u9", 0); ban == nil || ban.User != "" {
		t.Fatalf("failures forgotten by the reload: %+v", ban)
	}
}

// A refund is what admission spent, in the tier the connection was
// admitted in, even if the address became known-good (with a faster rate)
// in between.
func TestRefundIsWhatWasSpent(t *testing.T) {
	p := unlimited()
	p.Limits.RatePerIP = Rate{Burst: 2, Per: time.Minute}
	p.KnownGood = KnownGood{MinUsers: 3, Window: time.Hour, RatePerIP: Rate{Burst: 8, Per: time.Minute}}
	l := newLimiter(t, p)
	a := addr("192.0.2.110")
	first, _ := l.Admit(a, t0)
	if first.spentIP != int64(30*time.Second) {
		t.Fatalf("ordinary tier spent %v", time.Duration(first.spentIP))
	}
	for _, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, a, u, t0)
	}
	second, _ := l.Admit(a, t0)
	if second.spentIP != int64(7500*time.Millisecond) {
		t.Fatalf("known-good tier spent %v", time.Duration(second.spentIP))
	}
	// Each gives back what it spent (30 s and 7.5 s of refill): the
	// bucket is full again and takes the tier's burst of 8.
	first.LoginSucceeded(t0, "dan")
	second.LoginSucceeded(t0, "eve")
	if n, r := held(l, a, t0); n != 8 || r != RatePerIP {
		t.Fatalf("after the refunds %d admitted (then %v), want 8", n, r)
	}
}

// A few hundred honest users behind one address, with the default limits
// and the clock stepped. 9 a.m. is cold (nothing is known about the
// address): 60 connections arrive at the same instant, the rest of the
// office 20 at a time. Then, for an hour, every minute, every user opens a
// session at the same instant, twice a second apart, and the sessions of
// the minute before last end, so each user holds up to four. Meanwhile ten
// phones reconnect every ten seconds to retry a stale password. Nothing is
// refused and nothing is banned.
func TestHundredsOfUsersBehindOneAddress(t *testing.T) {
	const users, phones = 300, 10
	l, err := New(DefaultPolicy(), Options{RateEntries: 1 << 12})
	if err != nil {
		t.Fatal(err)
	}
	nat := addr("203.0.113.7")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refusals := 0
	refused := func(now time.Time, what string, d Decision) {
		if refusals++; refusals <= 5 {
			t.Errorf("%s at 9:00+%s refused by %v", what, now.Sub(t0), d.Reason)
		}
	}
	var live [][]*Ticket // sessions opened per burst, oldest first
	burst := func(now time.Time, who []int) {
		var batch []*Ticket
		for range who {
			tk, d := l.Admit(nat, now)
			if d.Refused {
				refused(now, "a session", d)
				continue
			}
			batch = append(batch, tk)
		}
		// Those with a pre-login slot log in, freeing slots for those
		// that wait for one (the proxy's WaitPreauth).
		for i, tk := range batch {
			if tk.NeedsWait() {
				if d := tk.WaitPreauth(ctx); d.Refused {
					t.Fatalf("wait refused: %+v", d)
				}
			}
			user := fmt.Sprint("user", who[i])
			if tk.UserBanned(now, user) {
				refused(now, user, Decision{Reason: Banned})
			}
			tk.LoginSucceeded(now, user)
			tk.LoggedIn()
		}
		live = append(live, batch)
	}
	stale := func(now time.Time) {
		for p := 0; p < phones; p++ {
			tk, d := l.Admit(nat, now)
			if d.Refused {
				refused(now, "a phone", d)
				continue
			}
			u := fmt.Sprint("phone", p)
			tk.LoginFailed(now, u, AttemptKey(u, []byte("last year's password")))
			tk.Release()
		}
	}
	all := make([]int, users)
	for i := range all {
		all[i] = i
	}
	burst(t0, all[:60])
	for i := 60; i < users; i += 20 {
		burst(t0.Add(time.Duration(i)*time.Second), all[i:i+20])
	}
	peak := 0
	for m := 10; m < 70; m++ {
		now := t0.Add(time.Duration(m) * time.Minute)
		burst(now, all)
		burst(now.Add(time.Second), all)
		for s := 2; s < 60; s += 10 {
			stale(now.Add(time.Duration(s) * time.Second))
		}
		total, _ := l.PerIP(nat)
		peak = max(peak, total)
		for len(live) > 2 {
			for _, tk := range live[0] {
				tk.Release()
			}
			live = live[1:]
		}
	}
	if peak < 4*users {
		t.Errorf("peak %d sessions, want %d", peak, 4*users)
	}
	if refusals > 0 {
		t.Fatalf("%d refusals", refusals)
	}
	for _, b := range l.Bans(t0.Add(70 * time.Minute)) {
		t.Errorf("ban %+v", b)
	}
}

// The seed story: courier's MAXPERIP=4 (imported as max_per_ip, which
// lowers max_preauth_per_ip with it) and one PC whose mail client opens
// thirty mailboxes, each session kept open. The first four connect; once
// three of them have logged in the address is known-good and the other
// twenty-six are admitted too.
func TestManyMailboxesOnOnePCWithMaxPerIPFour(t *testing.T) {
	p := DefaultPolicy()
	p.Limits.MaxPerIP, p.Limits.MaxPreauthPerIP = 4, 4
	l := newLimiter(t, p)
	pc := addr("192.0.2.120")
	var open []*Ticket
	for i := 0; i < 30; i++ {
		tk, d := l.Admit(pc, t0.Add(time.Duration(i)*time.Second))
		if d.Refused {
			t.Fatalf("mailbox %d refused by %v", i+1, d.Reason)
		}
		tk.LoginSucceeded(t0.Add(time.Duration(i)*time.Second), fmt.Sprint("mailbox", i))
		tk.LoggedIn()
		open = append(open, tk)
	}
	if total, _ := l.PerIP(pc); total != 30 {
		t.Fatalf("%d sessions", total)
	}
	// Another PC, four sessions of one user: the ordinary limit holds.
	other := addr("192.0.2.121")
	for i := 0; i < 4; i++ {
		tk, _ := l.Admit(other, t0)
		tk.LoginSucceeded(t0, "solo")
		tk.LoggedIn()
	}
	if _, d := l.Admit(other, t0); !d.Refused || d.Reason != MaxPerIP {
		t.Fatalf("fifth session of one user: %+v", d)
	}
}

// An admin can ask what the tier knows of an address: its users counted,
// its known-good end and its network's, and how many are known-good.
func TestKnownGoodOf(t *testing.T) {
	l := newLimiter(t, tierPolicy())
	a := addr("192.0.2.90")
	if k := l.KnownGoodOf(a, t0); !k.AddrUntil.IsZero() || k.AddrUsers != 0 || k.MinUsers != 3 || k.Prefix.String() != "192.0.2.0/24" {
		t.Fatalf("before any login: %+v", k)
	}
	loginAs(t, l, a, "ann", t0)
	loginAs(t, l, a, "bea", t0.Add(time.Minute))
	if k := l.KnownGoodOf(a, t0.Add(time.Minute)); !k.AddrUntil.IsZero() || k.AddrUsers != 2 || k.PrefixUsers != 2 {
		t.Fatalf("two users: %+v", k)
	}
	loginAs(t, l, a, "cid", t0.Add(2*time.Minute))
	now := t0.Add(3 * time.Minute)
	k := l.KnownGoodOf(a, now)
	if want := t0.Add(2*time.Minute + time.Hour); !k.AddrUntil.Equal(want) || !k.PrefixUntil.Equal(want) || k.AddrUsers != 3 {
		t.Fatalf("three users: %+v, want known-good until %v", k, want)
	}
	if ad, px := l.KnownGoodCount(now); ad != 1 || px != 1 {
		t.Fatalf("KnownGoodCount = %d, %d; want 1, 1", ad, px)
	}
	off := tierPolicy()
	off.KnownGood.MinUsers = 0
	if err := l.SetPolicy(off); err != nil {
		t.Fatal(err)
	}
	if ad, px := l.KnownGoodCount(now); ad != 0 || px != 0 {
		t.Fatalf("KnownGoodCount with the tier off = %d, %d", ad, px)
	}
	l.SetPolicy(tierPolicy())
	if ad, px := l.KnownGoodCount(t0.Add(3 * time.Hour)); ad != 0 || px != 0 {
		t.Fatalf("KnownGoodCount after the window = %d, %d", ad, px)
	}
	if k := l.KnownGoodOf(a, t0.Add(3*time.Hour)); !k.AddrUntil.IsZero() || k.AddrUsers != 0 {
		t.Fatalf("after the window: %+v", k)
	}
}
