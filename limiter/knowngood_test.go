package limiter

import (
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
			ts = append(ts, &tk)
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
