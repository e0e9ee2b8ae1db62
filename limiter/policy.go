// Package limiter decides whether a new connection or login may proceed:
// courier-style concurrency limits (MAXDAEMONS, MAXPERIP), a stricter limit
// on not-yet-logged-in connections per address, per-prefix limits that
// aggregate IPv6 properly, per user+address limits, new-connection rates
// that logins give back, auth-failure penalties and bans that spare shared
// addresses, a known-good tier for addresses many users log in from, and
// allow/deny/exempt lists. Limits are read from a Policy that a reload
// swaps whole; the live counters, the rate state, failures, bans and the
// known-good memory belong to the Limiter and survive every reload.
package limiter

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Reason names a limit; it is also the label of refusal counters.
type Reason uint8

// The limits, in the order Admit checks them.
const (
	Deny            Reason = iota // address in the deny list
	NotAllowed                    // allow list set and address not in it
	Banned                        // too many failed logins
	RatePerIP                     // new connections per address
	RatePerPrefix                 // new connections per prefix
	MaxConnections                // all connections (courier MAXDAEMONS)
	MaxPerIP                      // connections per address (courier MAXPERIP)
	MaxPerPrefix                  // connections per /24 or /64
	MaxPreauthPerIP               // not-logged-in connections per address
	MaxPerUserIP                  // sessions of one user from one address
	NumReasons
)

var reasonNames = [NumReasons]string{
	"deny", "not_allowed", "banned", "rate_per_ip", "rate_per_prefix",
	"max_connections", "max_per_ip", "max_per_prefix", "max_preauth_per_ip", "max_per_user_ip",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// ParseReason is the inverse of String.
func ParseReason(s string) (Reason, bool) {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i), true
		}
	}
	return 0, false
}

// Action is how a refusal looks to the client.
type Action uint8

const (
	// Close drops the TCP connection before the TLS handshake: cheapest,
	// right for floods, rate limits and the global cap. It is what
	// couriertcpd does for MAXPERIP.
	Close Action = iota
	// Bye completes the handshake and sends "* BYE [UNAVAILABLE] <reason>"
	// so the user's mail client shows why.
	Bye
	// Wait holds the connection before its handshake until a slot frees or
	// the handshake timeout passes (max_preauth_per_ip only): an honest
	// burst of logins is delayed, a flood of silent connections is cut off.
	Wait
)

var actionNames = [...]string{"close", "bye", "wait"}

func (a Action) String() string { return actionNames[a] }

// ParseAction is the inverse of String.
func ParseAction(s string) (Action, bool) {
	i := slices.Index(actionNames[:], s)
	return Action(i), i >= 0
}

// Rate is a new-connection rate: Burst connections at once, refilled at
// Burst per Per. A zero Rate is unlimited.
type Rate struct {
	Burst int
	Per   time.Duration
}

func (r Rate) enabled() bool { return r.Burst > 0 && r.Per > 0 }

// interval is the time one token takes to refill, in nanoseconds.
func (r Rate) interval() int64 { return int64(r.Per) / int64(r.Burst) }

// Limits are the numeric limits; 0 means unlimited.
type Limits struct {
	MaxConnections  int
	MaxPerIP        int
	MaxPreauthPerIP int
	MaxPerPrefix    int
	MaxPerUserIP    int
	RatePerIP       Rate
	RatePerPrefix   Rate
}

// Override replaces Limits for addresses in Prefix (courier's
// "allow,MAXCPERIP=n" in the access file). The most specific prefix wins.
type Override struct {
	Prefix netip.Prefix
	Limits Limits
}

// Penalty configures what failed logins cost. Accounts are never locked:
// only a user from one address, an address, or a prefix is penalised.
//
// A failure counts once per attempt: a retry of the same user and password
// (the same AttemptKey) within Window is not counted again, so a phone
// retrying an old password counts once however often it retries. Within
// Window, counting from the first counted failure:
//   - UserFailures failures of one user from one address ban that user
//     from that address (a user+address ban) for BanTime;
//   - Failures failures from one address that span at least MinUsers
//     distinct users (0 counts as 1) ban the address for BanTime, unless
//     the address is shared (another user logged in from it within Window,
//     or it is known-good): then the ban is narrowed to the failing user,
//     if that user has failed at least 3 times in the window;
//   - SprayFailures failures from one address ban it, shared or not;
//   - PrefixFailures failures from a prefix that span at least MinUsers
//     users ban the prefix, unless the prefix is known-good.
//
// A failed login's NO answer is held Delay per earlier counted failure, at
// most MaxDelay; the failures are the user's own on a shared address, the
// address's otherwise. A zero count turns its rule off.
type Penalty struct {
	Failures       int
	MinUsers       int
	UserFailures   int
	SprayFailures  int
	PrefixFailures int
	Window         time.Duration
	BanTime        time.Duration
	Delay          time.Duration
	MaxDelay       time.Duration
}

// on reports whether failures are counted at all.
func (pen *Penalty) on() bool {
	return pen.Failures > 0 || pen.UserFailures > 0 || pen.SprayFailures > 0 || pen.PrefixFailures > 0
}

// MaxMinUsers bounds Penalty.MinUsers: the distinct users of an address's
// failures are remembered up to this many.
const MaxMinUsers = recentSlots

// KnownGood is the tier for addresses that are shared by honest users: an
// office or campus behind one NAT address. An address from which MinUsers
// distinct users logged in successfully within one Window is known-good
// until Window after the last login that kept it so; its connections get
// MaxPerIP, MaxPreauthPerIP and RatePerIP. A prefix is known-good by the
// same rule over the logins of all its addresses, and its connections get
// MaxPerPrefix and RatePerPrefix. Each tier limit is used only where it is
// looser than the ordinary one (0 is unlimited). Addresses with an Override
// keep the override. MinUsers 0 turns the tier off.
type KnownGood struct {
	MinUsers        int
	Window          time.Duration
	MaxPerIP        int
	MaxPreauthPerIP int
	MaxPerPrefix    int
	RatePerIP       Rate
	RatePerPrefix   Rate
}

// MaxKnownGoodUsers bounds KnownGood.MinUsers: the distinct users of an
// address are remembered up to this many.
const MaxKnownGoodUsers = 8

// Policy is everything a reload can change. Treat it as immutable once
// handed to a Limiter.
type Policy struct {
	Limits     Limits
	Overrides  []Override
	Allow      []netip.Prefix
	Deny       []netip.Prefix
	Exempt     []netip.Prefix
	IPv4Prefix int // aggregation length for IPv4 (default 24)
	IPv6Prefix int // aggregation length for IPv6 (default 64)
	Action     [NumReasons]Action
	DryRun     [NumReasons]bool
	Penalty    Penalty
	KnownGood  KnownGood

	good Limits // Limits loosened by the known-good tier (prepare)
}

// Validate reports impossible settings.
func (p *Policy) Validate() error {
	if p.IPv4Prefix < 1 || p.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix must be 1..32, got %d", p.IPv4Prefix)
	}
	if p.IPv6Prefix < 1 || p.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix must be 1..128, got %d", p.IPv6Prefix)
	}
	for r, a := range p.Action {
		if a == Wait && Reason(r) != MaxPreauthPerIP {
			return fmt.Errorf("action \"wait\" applies only to max_preauth_per_ip, not %s", Reason(r))
		}
	}
	if pen := &p.Penalty; pen.on() {
		if pen.Window <= 0 || pen.BanTime <= 0 {
			return fmt.Errorf("auth-failure penalty needs a positive window and ban time")
		}
		if pen.MinUsers < 0 || pen.MinUsers > MaxMinUsers {
			return fmt.Errorf("auth-failure min_users must be 0..%d, got %d", MaxMinUsers, pen.MinUsers)
		}
	}
	if kg := &p.KnownGood; kg.MinUsers != 0 {
		if kg.MinUsers < 0 || kg.MinUsers > MaxKnownGoodUsers {
			return fmt.Errorf("known-good min_users must be 0 (off) or 1..%d, got %d", MaxKnownGoodUsers, kg.MinUsers)
		}
		if kg.Window <= 0 {
			return fmt.Errorf("known-good tier needs a positive window")
		}
	}
	for _, o := range p.Overrides {
		if !o.Prefix.IsValid() {
			return fmt.Errorf("override without a valid cidr")
		}
	}
	return nil
}

// prepare normalises prefixes and sorts overrides most specific first.
func (p *Policy) prepare() {
	norm := func(ps []netip.Prefix) {
		for i, q := range ps {
			ps[i] = unmapPrefix(q)
		}
	}
	norm(p.Allow)
	norm(p.Deny)
	norm(p.Exempt)
	for i := range p.Overrides {
		p.Overrides[i].Prefix = unmapPrefix(p.Overrides[i].Prefix)
	}
	slices.SortStableFunc(p.Overrides, func(a, b Override) int { return b.Prefix.Bits() - a.Prefix.Bits() })
	p.good = p.Limits
	if kg := &p.KnownGood; kg.MinUsers > 0 {
		p.good.MaxPerIP = looser(p.good.MaxPerIP, kg.MaxPerIP)
		p.good.MaxPreauthPerIP = looser(p.good.MaxPreauthPerIP, kg.MaxPreauthPerIP)
		p.good.MaxPerPrefix = looser(p.good.MaxPerPrefix, kg.MaxPerPrefix)
		p.good.RatePerIP = looserRate(p.good.RatePerIP, kg.RatePerIP)
		p.good.RatePerPrefix = looserRate(p.good.RatePerPrefix, kg.RatePerPrefix)
	}
}

// looser returns the looser of two limits, 0 being unlimited.
func looser(a, b int) int {
	if a == 0 || b == 0 {
		return 0
	}
	return max(a, b)
}

// looserRate returns a rate with the larger burst and the faster refill of
// a and b; a zero Rate is unlimited.
func looserRate(a, b Rate) Rate {
	if !a.enabled() || !b.enabled() {
		return Rate{}
	}
	burst := max(a.Burst, b.Burst)
	interval := min(a.interval(), b.interval())
	return Rate{Burst: burst, Per: time.Duration(interval * int64(burst))}
}

// unmapPrefix turns ::ffff:a.b.c.d/n into a.b.c.d/(n-96), so IPv4-mapped
// and plain IPv4 are the same addresses everywhere.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() {
		bits := max(p.Bits()-96, 0)
		return netip.PrefixFrom(a.Unmap(), bits).Masked()
	}
	return p.Masked()
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// limitsFor returns the limits for a (already unmapped), and whether they
// are an override's (which the known-good tier leaves alone).
func (p *Policy) limitsFor(a netip.Addr) (*Limits, bool) {
	for i := range p.Overrides {
		if p.Overrides[i].Prefix.Contains(a) {
			return &p.Overrides[i].Limits, true
		}
	}
	return &p.Limits, false
}

// tiered returns base with the known-good tier's limits for a known-good
// address (goodIP) and prefix (goodPrefix).
func (p *Policy) tiered(base *Limits, goodIP, goodPrefix bool) Limits {
	lim := *base
	if goodIP {
		lim.MaxPerIP, lim.MaxPreauthPerIP, lim.RatePerIP = p.good.MaxPerIP, p.good.MaxPreauthPerIP, p.good.RatePerIP
	}
	if goodPrefix {
		lim.MaxPerPrefix, lim.RatePerPrefix = p.good.MaxPerPrefix, p.good.RatePerPrefix
	}
	return lim
}

// PrefixOf returns the aggregation prefix of a (/24 and /64 by default).
func (p *Policy) PrefixOf(a netip.Addr) netip.Prefix {
	bits := p.IPv6Prefix
	if a.Is4() {
		bits = p.IPv4Prefix
	}
	pf, _ := a.Prefix(bits)
	return pf
}
