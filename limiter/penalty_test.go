package limiter

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// penaltyPolicy is the default ban policy with every connection limit off.
func penaltyPolicy() Policy {
	p := unlimited()
	d := DefaultPolicy()
	p.Penalty, p.KnownGood = d.Penalty, d.KnownGood
	return p
}

// failure is one failed login in a scenario: user, password, seconds
// after t0.
type failure struct {
	user, pass string
	at         int
}

func (f failure) attempt() uint64 { return AttemptKey(f.user, []byte(f.pass)) }

func TestBanPolicy(t *testing.T) {
	a := addr("192.0.2.60")
	other := addr("192.0.2.61")
	users := func(n, each int) []failure { // n users, each failing `each` distinct passwords
		var fs []failure
		for u := 0; u < n; u++ {
			for i := 0; i < each; i++ {
				fs = append(fs, failure{fmt.Sprintf("user%d", u), fmt.Sprintf("guess%d", i), len(fs)})
			}
		}
		return fs
	}
	tests := []struct {
		name     string
		logins   []string // users who logged in successfully from a at t0 - before
		before   time.Duration
		fails    []failure
		wantBans []string // Bans at the end, as "key" or "key user"
		banned   bool     // a refused at Admit
	}{
		{
			name:  "same wrong password retried 50 times: one failure, no ban",
			fails: repeat(failure{"phone", "old", 0}, 50, 10),
		},
		{
			name:     "10 distinct passwords for one user: user+address ban only",
			fails:    users(1, 10),
			wantBans: []string{"192.0.2.60/32 user0"},
		},
		{
			name:  "9 failures across 3 users: below the address threshold",
			fails: users(3, 3),
		},
		{
			name:  "10 failures across 2 users: no address ban",
			fails: append(users(1, 9), failure{"other", "x", 9}),
		},
		{
			name:     "10 failures across 3 users: address ban",
			fails:    append(users(2, 4), failure{"third", "x", 8}, failure{"third", "y", 9}),
			wantBans: []string{"192.0.2.60/32"},
			banned:   true,
		},
		{
			name:     "password spray over 10 users: address ban at the 10th",
			fails:    users(10, 1),
			wantBans: []string{"192.0.2.60/32"},
			banned:   true,
		},
		{
			name:     "another user logged in 5 minutes ago: the ban is narrowed to the failing user",
			logins:   []string{"bob"},
			before:   5 * time.Minute,
			fails:    append(users(2, 4)[1:], failure{"user2", "a", 7}, failure{"user2", "b", 8}, failure{"user2", "c", 9}),
			wantBans: []string{"192.0.2.60/32 user2"},
		},
		{
			name:     "another user logged in 11 minutes ago: outside the window, address ban",
			logins:   []string{"bob"},
			before:   11 * time.Minute,
			fails:    users(10, 1),
			wantBans: []string{"192.0.2.60/32"},
			banned:   true,
		},
		{
			name:   "shared address, 10 users failing once each (stale phones): no ban at all",
			logins: []string{"bob"},
			before: 5 * time.Minute,
			fails:  users(10, 1),
		},
		{
			name:     "only the failing user logged in before: not shared, address ban",
			logins:   []string{"user9"},
			before:   time.Minute,
			fails:    users(10, 1),
			wantBans: []string{"192.0.2.60/32"},
			banned:   true,
		},
		{
			name:     "known-good address (3 users an hour ago): narrowed",
			logins:   []string{"ann", "bea", "cid"},
			before:   time.Hour,
			fails:    append(users(2, 4)[1:], failure{"user2", "a", 7}, failure{"user2", "b", 8}, failure{"user2", "c", 9}),
			wantBans: []string{"192.0.2.60/32 user2"},
		},
		{
			name:     "known-good address sprayed at 100 failures in the window: address ban",
			logins:   []string{"ann", "bea", "cid"},
			before:   time.Hour,
			fails:    users(100, 1),
			wantBans: []string{"192.0.2.60/32"},
			banned:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, penaltyPolicy())
			for _, u := range tt.logins {
				loginAs(t, l, a, u, t0.Add(-tt.before))
			}
			tk, _ := l.Admit(a, t0)
			end := t0
			for _, f := range tt.fails {
				end = t0.Add(time.Duration(f.at) * time.Second)
				tk.LoginFailed(end, f.user, f.attempt())
			}
			var got []string
			for _, b := range l.Bans(end) {
				switch {
				case b.User == "":
					got = append(got, b.Key.String())
				case !tt.banned: // a spray over a shared address leaves narrowed user bans on the way
					got = append(got, b.Key.String()+" "+b.User)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantBans) {
				t.Errorf("bans %v, want %v", got, tt.wantBans)
			}
			_, d := l.Admit(a, end)
			if d.Refused != tt.banned || (d.Refused && d.Reason != Banned) {
				t.Errorf("admission after the failures: %+v, want refused=%v", d, tt.banned)
			}
			if _, d := l.Admit(other, end); d.Refused {
				t.Errorf("the neighbouring address refused: %v", d.Reason)
			}
			// Other users from the address still log in unless it is banned.
			if !tt.banned {
				loginAs(t, l, a, "someone-else", end)
			}
			// Every ban ends after ban_time.
			later := end.Add(10*time.Minute + time.Second)
			if _, d := l.Admit(a, later); d.Refused || len(l.Bans(later)) != 0 {
				t.Errorf("bans outlived ban_time: %+v %v", d, l.Bans(later))
			}
		})
	}
}

func repeat(f failure, n, every int) []failure {
	out := make([]failure, n)
	for i := range out {
		out[i] = f
		out[i].at = i * every
	}
	return out
}

// The counted failures, seen from inside: a retry of the same credentials
// counts once per window, and delays nothing.
func TestRetryCountedOncePerWindow(t *testing.T) {
	l := newLimiter(t, penaltyPolicy())
	a := addr("192.0.2.62")
	tk, _ := l.Admit(a, t0)
	key := AttemptKey("phone", []byte("old password"))
	for i := 0; i < 50; i++ {
		delay, ban := tk.LoginFailed(t0.Add(time.Duration(i)*5*time.Second), "phone", key)
		if delay != 0 || ban != nil {
			t.Fatalf("retry %d: delay %v ban %+v", i, delay, ban)
		}
	}
	count := func(k failKey) int32 {
		l.fails.mu.Lock()
		defer l.fails.mu.Unlock()
		r, _ := l.fails.lru.Peek(k)
		return r.count
	}
	uk := userFailKey(a, l.userHash("phone"))
	if n := count(uk); n != 1 {
		t.Fatalf("user+address record counts %d failures, want 1", n)
	}
	if n := count(prefixFailKey(hostPrefix(a))); n != 1 {
		t.Fatalf("address record counts %d failures, want 1", n)
	}
	// The user name's case does not make it another attempt.
	tk.LoginFailed(t0.Add(time.Minute), "PHONE", AttemptKey("Phone", []byte("old password")))
	if n := count(uk); n != 1 {
		t.Fatalf("after PHONE: %d", n)
	}
	// Unknown attempts (0) count every time; so does the retry once the
	// window has passed.
	tk.LoginFailed(t0.Add(2*time.Minute), "phone", 0)
	if n := count(uk); n != 2 {
		t.Fatalf("after an unknown attempt: %d", n)
	}
	tk.LoginFailed(t0.Add(11*time.Minute), "phone", key)
	if n := count(uk); n != 1 {
		t.Fatalf("next window: %d", n)
	}
	// A successful login forgets the user's failures on the address.
	ok, _ := l.Admit(a, t0.Add(12*time.Minute))
	ok.LoginSucceeded(t0.Add(12*time.Minute), "Phone")
	if n := count(uk); n != 0 {
		t.Fatalf("after the user's login: %d", n)
	}
}

// A user banned on an address: other users from that address are still
// admitted and log in, the same user from elsewhere too.
func TestUserBanLeavesOthersAlone(t *testing.T) {
	l := newLimiter(t, penaltyPolicy())
	a := addr("192.0.2.63")
	tk, _ := l.Admit(a, t0)
	var ban *Ban
	for i := 0; i < 10; i++ {
		_, b := tk.LoginFailed(t0.Add(time.Duration(i)*time.Second), "alice", AttemptKey("alice", []byte(fmt.Sprint(i))))
		if b != nil {
			if i != 9 {
				t.Fatalf("ban at failure %d", i+1)
			}
			ban = b
		}
	}
	if ban == nil || ban.User != "alice" || ban.Key != netip.MustParsePrefix("192.0.2.63/32") || ban.Failures != 10 || ban.Narrowed {
		t.Fatalf("ban %+v", ban)
	}
	now := t0.Add(time.Minute)
	bob, d := l.Admit(a, now)
	if d.Refused || bob.UserBanned(now, "bob") || !bob.UserBanned(now, "Alice") {
		t.Fatalf("admit %+v, bob banned %v, alice banned %v", d, bob.UserBanned(now, "bob"), bob.UserBanned(now, "Alice"))
	}
	elsewhere, _ := l.Admit(addr("198.51.100.1"), now)
	if elsewhere.UserBanned(now, "alice") {
		t.Fatal("alice banned from another address")
	}
	// Unban by address lifts user bans on it; UnbanUser lifts one.
	if !l.UnbanUser(a, "ALICE") || bob.UserBanned(now, "alice") {
		t.Fatal("UnbanUser")
	}
	for i := 0; i < 10; i++ {
		tk.LoginFailed(now, "carol", AttemptKey("carol", []byte(fmt.Sprint(i))))
	}
	if !bob.UserBanned(now, "carol") || !l.Unban(netip.MustParsePrefix("192.0.2.0/24")) || bob.UserBanned(now, "carol") {
		t.Fatal("Unban of the network did not lift carol's ban")
	}
}

// The NO answer's delay follows the user's own failures on a shared
// address, and the address's otherwise.
func TestDelayOnSharedAddressFollowsTheUser(t *testing.T) {
	for _, shared := range []bool{false, true} {
		l := newLimiter(t, penaltyPolicy())
		a := addr("192.0.2.64")
		if shared {
			loginAs(t, l, a, "bob", t0)
		}
		tk, _ := l.Admit(a, t0)
		for i := 0; i < 5; i++ {
			tk.LoginFailed(t0, fmt.Sprint("user", i), 0)
		}
		delay, _ := tk.LoginFailed(t0, "phone", AttemptKey("phone", []byte("old")))
		want := 5 * time.Second
		if shared {
			want = 0
		}
		if delay != want {
			t.Errorf("shared=%v: delay %v, want %v", shared, delay, want)
		}
	}
}

func TestExemptNeverPenalised(t *testing.T) {
	p := penaltyPolicy()
	p.Exempt = []netip.Prefix{netip.MustParsePrefix("192.0.2.65/32")}
	l := newLimiter(t, p)
	tk, _ := l.Admit(addr("192.0.2.65"), t0)
	for i := 0; i < 200; i++ {
		if d, b := tk.LoginFailed(t0, fmt.Sprint("u", i%20), 0); d != 0 || b != nil {
			t.Fatalf("exempt penalised: %v %+v", d, b)
		}
	}
	if tk.UserBanned(t0, "u1") || len(l.Bans(t0)) != 0 {
		t.Fatal("exempt banned")
	}
}

func TestPrefixBanNeedsUsersAndSparesKnownGood(t *testing.T) {
	for _, known := range []bool{false, true} {
		p := penaltyPolicy()
		p.Penalty.Failures = 0
		p.Penalty.PrefixFailures = 6
		l := newLimiter(t, p)
		if known {
			for _, u := range []string{"ann", "bea", "cid"} {
				loginAs(t, l, addr("192.0.2.200"), u, t0)
			}
		}
		for i := 0; i < 6; i++ {
			tk, _ := l.Admit(addr(fmt.Sprintf("192.0.2.%d", 70+i)), t0)
			tk.LoginFailed(t0, fmt.Sprint("u", i%3), 0)
		}
		_, d := l.Admit(addr("192.0.2.99"), t0)
		if d.Refused == known {
			t.Errorf("known-good=%v: neighbour %+v", known, d)
		}
	}
}

// A network ban (ctl ban 192.0.2.0/24) refuses the network's strangers
// and spares a known-good address inside it, as the kernel's keep set
// does; a ban of that address itself refuses it.
func TestNetworkBanSparesKnownGoodAddress(t *testing.T) {
	l := newLimiter(t, tierPolicy())
	office, stranger := addr("192.0.2.5"), addr("192.0.2.77")
	for _, u := range []string{"ann", "bea", "cid"} {
		loginAs(t, l, office, u, t0)
	}
	now := t0.Add(time.Minute)
	l.ApplyBan(Ban{Key: netip.MustParsePrefix("192.0.2.0/24"), Until: now.Add(time.Hour)})
	if _, d := l.Admit(stranger, now); !d.Refused || d.Reason != Banned {
		t.Errorf("a stranger in the banned network: %+v", d)
	}
	tk, d := l.Admit(office, now)
	if d.Refused {
		t.Errorf("the known-good office in the banned network was refused: %+v", d)
	}
	tk.Release()
	l.ApplyBan(Ban{Key: netip.MustParsePrefix("192.0.2.5/32"), Until: now.Add(time.Hour)})
	if _, d := l.Admit(office, now); !d.Refused || d.Reason != Banned {
		t.Errorf("the office's own ban did not refuse it: %+v", d)
	}
}

func TestBansBounded(t *testing.T) {
	p := penaltyPolicy()
	p.Penalty.UserFailures = 1
	l, err := New(p, Options{RateEntries: 1024, FailEntries: 1024, BanEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	tk, _ := l.Admit(addr("192.0.2.80"), t0)
	for i := 0; i < 100; i++ {
		// One user per address /32 would be an address ban; these are
		// user bans on 100 addresses.
		tk2, _ := l.Admit(addr(fmt.Sprintf("10.0.%d.1", i)), t0)
		tk2.LoginFailed(t0.Add(time.Duration(i)*time.Second), "u", 0)
	}
	tk.Release()
	if n := len(l.Bans(t0)); n > 8 {
		t.Fatalf("%d bans held, bound 8", n)
	}
}

func TestAttemptKey(t *testing.T) {
	k := AttemptKey("Bob", []byte("pw"))
	if k == 0 || k != AttemptKey("bob", []byte("pw")) {
		t.Fatal("not stable or case-sensitive in the user")
	}
	for _, other := range []uint64{
		AttemptKey("bob", []byte("pw2")), AttemptKey("bobp", []byte("w")), AttemptKey("alice", []byte("pw")),
	} {
		if other == k {
			t.Fatal("distinct credentials share a key")
		}
	}
}
