package limiter

import (
	"context"
	"hash/maphash"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const numShards = 64

// Limiter holds live counters and rate state. All methods are safe for
// concurrent use; Admit takes no global lock.
type Limiter struct {
	policy atomic.Pointer[Policy]
	seed   maphash.Seed
	total  atomic.Int64

	ips      [numShards]ipShard
	prefixes [numShards]countShard[prefixKey]
	users    [numShards]countShard[userKey]

	rateIP, ratePrefix *rateTable
	goodIP, goodPrefix *goodTable
	fails              *failTable
	wouldRefuse        [NumReasons]atomic.Uint64
	cl                 clusterState // shared state, if any (SetShared)
}

// ipCount is an address's live connections. Maps of these hold no
// pointers, so the garbage collector does not scan them.
type ipCount struct {
	total, preauth int32
}

type ipShard struct {
	sync.Mutex
	m map[key]ipCount
	// freed holds, for addresses with connections waiting for a pre-login
	// slot, a channel closed when one frees.
	freed map[key]chan struct{}
}

type countShard[K comparable] struct {
	sync.Mutex
	m map[K]int32
}

// prefixKey names a prefix without pointers.
type prefixKey struct {
	addr key
	bits uint8
}

func prefixKeyOf(p netip.Prefix) prefixKey { return prefixKey{addrKey(p.Addr()), uint8(p.Bits())} }

type userKey struct {
	user string
	addr netip.Addr
}

// Options size the limiter's bounded state.
type Options struct {
	// RateEntries bounds the addresses (and, separately, prefixes) whose
	// connection rate is remembered, at 16 bytes each. Beyond it a new key
	// takes the slot of the key in its set whose bucket refills soonest
	// (usually one already full again, so nothing is lost); see rateTable.
	// 0 means 1,048,576.
	RateEntries int
	// FailEntries bounds the failure records: addresses, prefixes and
	// users on an address with failed logins remembered (least recently
	// failed forgotten first), about 240 bytes each. 0 means 262,144.
	FailEntries int
	// BanEntries bounds the bans in force, separately for address and
	// prefix bans and for user+address bans; when full, expired bans go
	// first, then the one that expires soonest. 0 means 65,536.
	BanEntries int
	// KnownGoodEntries bounds the addresses (and, separately, prefixes)
	// whose successful logins are remembered for the known-good tier and
	// for narrowing bans: ways of 88 bytes, of which about a quarter hold
	// addresses before any is forgotten (see goodTable), so about 350 bytes
	// per address. 0 means RateEntries/16, at least 4,096.
	KnownGoodEntries int
}

// New returns a limiter enforcing p.
func New(p Policy, opts Options) (*Limiter, error) {
	if opts.RateEntries <= 0 {
		opts.RateEntries = 1 << 20
	}
	if opts.FailEntries <= 0 {
		opts.FailEntries = 1 << 18
	}
	if opts.BanEntries <= 0 {
		opts.BanEntries = 1 << 16
	}
	if opts.KnownGoodEntries <= 0 {
		opts.KnownGoodEntries = max(opts.RateEntries/16, 4096)
	}
	l := &Limiter{
		seed:       maphash.MakeSeed(),
		rateIP:     newRateTable(opts.RateEntries),
		ratePrefix: newRateTable(opts.RateEntries),
		goodIP:     newGoodTable(opts.KnownGoodEntries),
		goodPrefix: newGoodTable(opts.KnownGoodEntries),
		fails:      newFailTable(opts.FailEntries, opts.BanEntries),
	}
	for i := range l.ips {
		l.ips[i].m = make(map[key]ipCount)
		l.ips[i].freed = make(map[key]chan struct{})
		l.prefixes[i].m = make(map[prefixKey]int32)
		l.users[i].m = make(map[userKey]int32)
	}
	if err := l.SetPolicy(p); err != nil {
		return nil, err
	}
	return l, nil
}

// SetPolicy swaps the policy. Counters, rate state, failures, bans and the
// known-good memory are kept: lowering a limit refuses new connections
// only, and never closes existing ones.
func (l *Limiter) SetPolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	p.Overrides = append([]Override(nil), p.Overrides...)
	p.prepare()
	l.policy.Store(&p)
	return nil
}

// Policy returns the policy in force.
func (l *Limiter) Policy() *Policy { return l.policy.Load() }

func (l *Limiter) shardOf(k key) uint32 {
	return uint32(maphash.Bytes(l.seed, k[:]) % numShards)
}

// Decision is the outcome of an admission or login check.
type Decision struct {
	Refused bool
	Reason  Reason // the refusing limit, valid if Refused
	Action  Action
	// WouldRefuse has bit r set for each limit in dry-run mode that would
	// have refused; the caller logs and counts them.
	WouldRefuse uint16
	Limit       int // the limit value that was hit, for the log line
}

// Ticket is what one admitted connection holds. Release it exactly once.
// The zero Ticket holds nothing.
type Ticket struct {
	l       *Limiter
	addr    netip.Addr
	k       key // addr in 16-byte form
	prefix  netip.Prefix
	pk      prefixKey
	counted uint8 // bits: countedTotal, countedIP, countedPrefix, countedPreauth
	exempt  bool
	// goodIP and goodPrefix: the address and prefix were known-good at
	// admission; the connection keeps that tier's limits for its life.
	goodIP, goodPrefix bool
	// spentIP and spentPrefix: the rate tokens admission took, in
	// nanoseconds of refill, which a successful login gives back.
	spentIP, spentPrefix int64
	user                 userKey
	hasUser              bool
	released             bool
	cl                   ticketCluster
}

const (
	countedTotal = 1 << iota
	countedIP
	countedPrefix
	countedPreauth
)

// Addr returns the connection's address (IPv4-mapped addresses unmapped).
func (t *Ticket) Addr() netip.Addr { return t.addr }

// Prefix returns the aggregation prefix the connection was counted in.
func (t *Ticket) Prefix() netip.Prefix { return t.prefix }

// refuse decides between refusing and, in dry-run, recording.
func (d *Decision) refuse(p *Policy, r Reason, limit int) bool {
	if p.DryRun[r] {
		d.WouldRefuse |= 1 << r
		return false
	}
	d.Refused, d.Reason, d.Action, d.Limit = true, r, p.Action[r], limit
	return true
}

// Admit decides on a new connection from client at now. Unless refused,
// the returned ticket holds the connection's places in the counters (and
// may need WaitPreauth); a refused decision comes with the zero Ticket.
//
// With shared state (SetShared), Admit decides what it can without a
// round trip (lists, bans, refusals remembered from the shared limits) and
// takes this node's places; Confirm then checks the shared limits.
func (l *Limiter) Admit(client netip.Addr, now time.Time) (Ticket, Decision) {
	if l.cl.s != nil {
		return l.admitCluster(client, now)
	}
	return l.admit(client, now, false)
}

// admit is Admit on this node's state. With book, the rates and the
// total, per-address and per-prefix counts are the shared state's to
// check (Confirm): only the over-limit cache refuses here, and the counts
// are this node's bookkeeping.
func (l *Limiter) admit(client netip.Addr, now time.Time, book bool) (Ticket, Decision) {
	p := l.policy.Load()
	a := client.Unmap().WithZone("")
	var d Decision
	if contains(p.Deny, a) && d.refuse(p, Deny, 0) {
		return Ticket{}, d
	}
	if len(p.Allow) > 0 && !contains(p.Allow, a) && d.refuse(p, NotAllowed, 0) {
		return Ticket{}, d
	}
	t := Ticket{l: l, addr: a, k: addrKey(a), prefix: p.PrefixOf(a), exempt: contains(p.Exempt, a)}
	t.pk = prefixKeyOf(t.prefix)
	lim, overridden := p.limitsFor(a)
	var tier Limits
	if !t.exempt {
		if l.fails.banned(a, t.prefix, now) && d.refuse(p, Banned, 0) {
			return Ticket{}, d
		}
		if !overridden && p.KnownGood.MinUsers > 0 {
			n := now.UnixNano()
			t.goodIP, t.goodPrefix = l.goodIP.good(t.k, n), l.goodPrefix.good(t.pk.addr, n)
			if t.goodIP || t.goodPrefix {
				tier = p.tiered(lim, t.goodIP, t.goodPrefix)
				lim = &tier
			}
		}
		if !book && !l.spendRates(&t, p, lim, now, &d) {
			return Ticket{}, d
		}
	}
	if book && l.overLimit(&t, p, now, &d) {
		return Ticket{}, d
	}
	t.cl.book = book
	if !l.count(&t, p, lim, &d) {
		t.Release()
		return Ticket{}, d
	}
	return t, d
}

// spendRates takes a token from the address's and the prefix's rate
// buckets, and notes in t what a login will give back.
func (l *Limiter) spendRates(t *Ticket, p *Policy, lim *Limits, now time.Time, d *Decision) bool {
	if r := lim.RatePerIP; r.enabled() {
		if l.rateIP.allow(t.k, r, now) {
			t.spentIP = r.interval()
		} else if d.refuse(p, RatePerIP, r.Burst) {
			return false
		}
	}
	if r := lim.RatePerPrefix; r.enabled() {
		if l.ratePrefix.allow(t.pk.addr, r, now) {
			t.spentPrefix = r.interval()
		} else if d.refuse(p, RatePerPrefix, r.Burst) {
			return false
		}
	}
	return true
}

// count takes the connection's places in the concurrency counters. On a
// refusal it leaves what it took in t.counted for Release to undo, except
// that a Wait refusal for the preauth limit keeps the other places.
func (l *Limiter) count(t *Ticket, p *Policy, lim *Limits, d *Decision) bool {
	if n := l.total.Add(1); !t.cl.book && lim.MaxConnections > 0 && n > int64(lim.MaxConnections) && d.refuse(p, MaxConnections, lim.MaxConnections) {
		l.total.Add(-1)
		return false
	}
	t.counted |= countedTotal
	if t.exempt {
		return true
	}
	s := &l.ips[l.shardOf(t.k)]
	s.Lock()
	c := s.m[t.k]
	if !t.cl.book && lim.MaxPerIP > 0 && int(c.total) >= lim.MaxPerIP && d.refuse(p, MaxPerIP, lim.MaxPerIP) {
		s.Unlock()
		return false
	}
	c.total++
	t.counted |= countedIP
	preauthFull := lim.MaxPreauthPerIP > 0 && int(c.preauth) >= lim.MaxPreauthPerIP
	if !preauthFull {
		c.preauth++
		t.counted |= countedPreauth
	}
	s.m[t.k] = c
	s.Unlock()

	ps := &l.prefixes[l.shardOf(t.pk.addr)]
	ps.Lock()
	if n := ps.m[t.pk]; !t.cl.book && lim.MaxPerPrefix > 0 && int(n) >= lim.MaxPerPrefix && d.refuse(p, MaxPerPrefix, lim.MaxPerPrefix) {
		ps.Unlock()
		return false
	}
	ps.m[t.pk]++
	t.counted |= countedPrefix
	ps.Unlock()

	if !preauthFull {
		return true
	}
	if d.refuse(p, MaxPreauthPerIP, lim.MaxPreauthPerIP) {
		if d.Action == Wait {
			d.Refused = false // the caller waits (NeedsWait); other places stay taken
			return true
		}
		return false
	}
	// Dry run: take the slot anyway, over the limit.
	s.Lock()
	c = s.m[t.k]
	c.preauth++
	s.m[t.k] = c
	t.counted |= countedPreauth
	s.Unlock()
	return true
}

// LimitsFor returns the ordinary limits that apply to a (its override, if
// any), without the known-good tier.
func (l *Limiter) LimitsFor(a netip.Addr) Limits {
	lim, _ := l.policy.Load().limitsFor(a.Unmap())
	return *lim
}

// limits returns the limits that apply to the ticket's connection: its
// override, or the ordinary limits in the tier it was admitted in.
func (t *Ticket) limits(p *Policy) Limits {
	lim, overridden := p.limitsFor(t.addr)
	if overridden || p.KnownGood.MinUsers <= 0 || !(t.goodIP || t.goodPrefix) {
		return *lim
	}
	return p.tiered(lim, t.goodIP, t.goodPrefix)
}

// NeedsWait reports whether the ticket must WaitPreauth before going on.
func (t *Ticket) NeedsWait() bool {
	return !t.exempt && t.counted&countedIP != 0 && t.counted&countedPreauth == 0
}

// WaitPreauth blocks until the address has a free not-logged-in slot, or
// ctx ends (the caller's handshake deadline or a kill).
func (t *Ticket) WaitPreauth(ctx context.Context) error {
	l := t.l
	s := &l.ips[l.shardOf(t.k)]
	for {
		lim := t.limits(l.policy.Load())
		s.Lock()
		c := s.m[t.k]
		if lim.MaxPreauthPerIP <= 0 || int(c.preauth) < lim.MaxPreauthPerIP {
			c.preauth++
			s.m[t.k] = c
			t.counted |= countedPreauth
			s.Unlock()
			return nil
		}
		ch := s.freed[t.k]
		if ch == nil {
			ch = make(chan struct{})
			s.freed[t.k] = ch
		}
		s.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// releasePreauth gives back the not-logged-in slot and wakes waiters; the
// shard lock must be held.
func (t *Ticket) releasePreauth(s *ipShard, c *ipCount) {
	if t.counted&countedPreauth == 0 {
		return
	}
	t.counted &^= countedPreauth
	c.preauth--
	if ch := s.freed[t.k]; ch != nil {
		close(ch)
		delete(s.freed, t.k)
	}
}

// LoggedIn moves the connection out of the not-logged-in count.
func (t *Ticket) LoggedIn() {
	if t.exempt || t.counted&countedIP == 0 {
		return
	}
	s := &t.l.ips[t.l.shardOf(t.k)]
	s.Lock()
	c := s.m[t.k]
	t.releasePreauth(s, &c)
	s.m[t.k] = c
	s.Unlock()
}

// ReserveUser takes a place for user from this address before the login is
// forwarded (max_per_user_ip); CommitUser(false) gives it back if the login
// fails. User names are compared case-insensitively.
func (t *Ticket) ReserveUser(user string) Decision {
	var d Decision
	if t.l == nil || t.exempt || t.hasUser {
		return d
	}
	if t.l.cl.s != nil {
		return t.reserveUserCluster(user)
	}
	return t.reserveUser(user, false)
}

// reserveUser counts user on this node; with book, without checking the
// limit (the shared state checked it).
func (t *Ticket) reserveUser(user string, book bool) Decision {
	var d Decision
	p := t.l.policy.Load()
	lim, _ := p.limitsFor(t.addr)
	k := userKey{strings.ToLower(user), t.addr}
	s := &t.l.users[t.l.shardOf(t.k)]
	s.Lock()
	defer s.Unlock()
	if n := s.m[k]; !book && lim.MaxPerUserIP > 0 && int(n) >= lim.MaxPerUserIP && d.refuse(p, MaxPerUserIP, lim.MaxPerUserIP) {
		return d
	}
	s.m[k]++
	t.user, t.hasUser = k, true
	return d
}

// CommitUser keeps the reserved place if ok, else gives it back.
func (t *Ticket) CommitUser(ok bool) {
	if t.l != nil && t.l.cl.s != nil {
		t.commitUserCluster(ok)
		return
	}
	if !ok {
		t.releaseUser()
	}
}

func (t *Ticket) releaseUser() {
	if t.l == nil {
		return
	}
	if t.l.cl.s != nil {
		t.commitUserCluster(false)
		return
	}
	t.releaseUserLocal()
}

func (t *Ticket) releaseUserLocal() {
	if !t.hasUser {
		return
	}
	s := &t.l.users[t.l.shardOf(t.k)]
	s.Lock()
	if s.m[t.user]--; s.m[t.user] <= 0 {
		delete(s.m, t.user)
	}
	s.Unlock()
	t.hasUser = false
}

// Release gives back everything the ticket holds. Idempotent.
func (t *Ticket) Release() {
	if t == nil || t.l == nil || t.released {
		return
	}
	t.released = true
	if t.l.cl.s != nil {
		t.releaseCluster()
		return
	}
	t.releaseCounts()
}

// releaseCounts gives back the ticket's places in this node's counts.
func (t *Ticket) releaseCounts() {
	l := t.l
	if t.counted&countedTotal != 0 {
		l.total.Add(-1)
	}
	if t.counted&countedIP != 0 {
		s := &l.ips[l.shardOf(t.k)]
		s.Lock()
		c := s.m[t.k]
		t.releasePreauth(s, &c)
		if c.total--; c.total <= 0 {
			delete(s.m, t.k)
		} else {
			s.m[t.k] = c
		}
		s.Unlock()
	}
	if t.counted&countedPrefix != 0 {
		ps := &l.prefixes[l.shardOf(t.pk.addr)]
		ps.Lock()
		if ps.m[t.pk]--; ps.m[t.pk] <= 0 {
			delete(ps.m, t.pk)
		}
		ps.Unlock()
	}
	t.releaseUserLocal()
	t.counted = 0
}

// Total is the number of connections counted.
func (l *Limiter) Total() int { return int(l.total.Load()) }

// PerIP returns the live connection count of an address (for tests and
// the admin endpoint).
func (l *Limiter) PerIP(a netip.Addr) (total, preauth int) {
	k := addrKey(a.Unmap())
	s := &l.ips[l.shardOf(k)]
	s.Lock()
	defer s.Unlock()
	c := s.m[k]
	return int(c.total), int(c.preauth)
}

// NoteWouldRefuse counts dry-run hits (the caller also logs them).
func (l *Limiter) NoteWouldRefuse(mask uint16) {
	for r := Reason(0); r < NumReasons; r++ {
		if mask&(1<<r) != 0 {
			l.wouldRefuse[r].Add(1)
		}
	}
}

// WouldRefuse returns the dry-run count for r.
func (l *Limiter) WouldRefuse(r Reason) uint64 { return l.wouldRefuse[r].Load() }
