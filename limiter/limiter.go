package limiter

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const numShards = 64

// Limiter holds live counters and rate state. All methods are safe for
// concurrent use; Admit takes no global lock.
type Limiter struct {
	own    atomic.Pointer[Policy] // SetPolicy's
	policy func() *Policy         // own.Load, or what Follow gave
	seed   maphash.Seed
	total  atomic.Int64

	ips      [numShards]ipShard
	prefixes [numShards]countShard[prefixKey]
	users    [numShards]countShard[userKey]

	rateIP, ratePrefix *rateTable
	goodIP, goodPrefix *goodTable
	onGood             atomic.Pointer[func(netip.Addr, time.Time)] // OnKnownGood's
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
	l.policy = l.own.Load
	if err := l.SetPolicy(p); err != nil {
		return nil, err
	}
	return l, nil
}

// SetPolicy swaps the policy. Counters, rate state, failures, bans and the
// known-good memory are kept: lowering a limit refuses new connections
// only, and never closes existing ones.
func (l *Limiter) SetPolicy(p Policy) error {
	pp, err := Prepare(p)
	if err != nil {
		return err
	}
	l.own.Store(pp)
	return nil
}

// Prepare validates p and returns it ready for the limiter to read (for
// SetPolicy, or for a snapshot that Follow reads).
func Prepare(p Policy) (*Policy, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p.Overrides = append([]Override(nil), p.Overrides...)
	p.prepare()
	return &p, nil
}

// Follow makes the limiter read its policy from src from now on, instead
// of keeping its own: a caller's snapshot of a whole configuration,
// swapped in one store. src must return what Prepare returned. Call it
// before the limiter is used.
func (l *Limiter) Follow(src func() *Policy) { l.policy = src }

// Policy returns the policy in force.
func (l *Limiter) Policy() *Policy { return l.policy() }

func (l *Limiter) shardOf(k key) uint32 {
	return uint32(maphash.Bytes(l.seed, k[:]) % numShards)
}

// Decision is the outcome of an admission or login check. It carries all
// that reporting it needs (the log line, the counter, the dry-run lines,
// the admin tracker), so that the caller asks the limiter nothing more.
type Decision struct {
	Refused bool
	Reason  Reason // the refusing limit, valid if Refused
	Action  Action
	Limit   int // the limit value that was hit, for the log line
	// WouldRefuse has bit r set for each limit in dry-run mode that would
	// have refused (the limiter has counted them); WouldLimit[r] is that
	// limit's value. The caller logs them.
	WouldRefuse uint16
	WouldLimit  [NumReasons]int32
	Addr        netip.Addr   // the client's address, unmapped
	Prefix      netip.Prefix // its aggregation prefix, for per-network lines
	User        string       // the user, for max_per_user_ip
}

// Ticket is what one admitted connection holds; Release gives it back. It
// is handled by pointer, so that there is one of it to release: a copy
// would release again. Every method is safe on a nil *Ticket (no limiter,
// or a refused connection), which holds nothing.
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

// none reports whether the ticket holds nothing: nil, or one that Confirm
// found refused under the local limits.
func (t *Ticket) none() bool { return t == nil || t.l == nil }

// Addr returns the connection's address (IPv4-mapped addresses unmapped).
func (t *Ticket) Addr() netip.Addr {
	if t.none() {
		return netip.Addr{}
	}
	return t.addr
}

// Prefix returns the aggregation prefix the connection was counted in.
func (t *Ticket) Prefix() netip.Prefix {
	if t.none() {
		return netip.Prefix{}
	}
	return t.prefix
}

// refuse decides between refusing and, in dry-run, recording and counting.
func (l *Limiter) refuse(d *Decision, p *Policy, r Reason, limit int) bool {
	if p.DryRun[r] {
		d.WouldRefuse |= 1 << r
		d.WouldLimit[r] = int32(limit)
		l.wouldRefuse[r].Add(1)
		return false
	}
	d.Refused, d.Reason, d.Action, d.Limit = true, r, p.Action[r], limit
	return true
}

// Admit decides on a new connection from client at now. Unless refused,
// the returned ticket holds the connection's places in the counters (and
// may need WaitPreauth); a refused decision comes with a nil Ticket.
//
// With shared state (SetShared), Admit decides what it can without a
// round trip (lists, bans, refusals remembered from the shared limits) and
// takes this node's places; Confirm then checks the shared limits.
func (l *Limiter) Admit(client netip.Addr, now time.Time) (*Ticket, Decision) {
	if l.cl.s != nil {
		return l.admitCluster(client, now)
	}
	return l.admit(client, now, false)
}

// admit is Admit on this node's state. With book, the rates and the
// total, per-address and per-prefix counts are the shared state's to
// check (Confirm): only the over-limit cache refuses here, and the counts
// are this node's bookkeeping.
func (l *Limiter) admit(client netip.Addr, now time.Time, book bool) (*Ticket, Decision) {
	p := l.policy()
	a := client.Unmap().WithZone("")
	d := Decision{Addr: a}
	if contains(p.Deny, a) && l.refuse(&d, p, Deny, 0) {
		return nil, d
	}
	if len(p.Allow) > 0 && !contains(p.Allow, a) && l.refuse(&d, p, NotAllowed, 0) {
		return nil, d
	}
	// Built on the stack; only an admitted connection's is copied to the
	// heap, so a flood's refusals allocate nothing.
	t := &Ticket{l: l, addr: a, k: addrKey(a), prefix: p.PrefixOf(a), exempt: contains(p.Exempt, a)}
	t.pk = prefixKeyOf(t.prefix)
	d.Prefix = t.prefix
	lim, overridden := p.limitsFor(a)
	var tier Limits
	if !t.exempt {
		n := now.UnixNano()
		goodIP := p.KnownGood.MinUsers > 0 && l.goodIP.good(t.k, n)
		if l.fails.banned(a, t.prefix, now, goodIP) && l.refuse(&d, p, Banned, 0) {
			return nil, d
		}
		if !overridden && p.KnownGood.MinUsers > 0 {
			t.goodIP, t.goodPrefix = goodIP, l.goodPrefix.good(t.pk.addr, n)
			if t.goodIP || t.goodPrefix {
				tier = p.tiered(lim, t.goodIP, t.goodPrefix)
				lim = &tier
			}
		}
		if !book && !l.spendRates(t, p, lim, now, &d) {
			return nil, d
		}
	}
	if book && l.overLimit(t, p, now, &d) {
		return nil, d
	}
	t.cl.book = book
	if !l.count(t, p, lim, &d) {
		t.Release()
		return nil, d
	}
	held := new(Ticket)
	*held = *t
	return held, d
}

// spendRates takes a token from the address's and the prefix's rate
// buckets, and notes in t what a login will give back.
func (l *Limiter) spendRates(t *Ticket, p *Policy, lim *Limits, now time.Time, d *Decision) bool {
	if r := lim.RatePerIP; r.enabled() {
		if l.rateIP.allow(t.k, r, now) {
			t.spentIP = r.interval()
		} else if l.refuse(d, p, RatePerIP, r.Burst) {
			return false
		}
	}
	if r := lim.RatePerPrefix; r.enabled() {
		if l.ratePrefix.allow(t.pk.addr, r, now) {
			t.spentPrefix = r.interval()
		} else if l.refuse(d, p, RatePerPrefix, r.Burst) {
			return false
		}
	}
	return true
}

// count takes the connection's places in the concurrency counters. On a
// refusal it leaves what it took in t.counted for Release to undo, except
// that a Wait refusal for the preauth limit keeps the other places.
func (l *Limiter) count(t *Ticket, p *Policy, lim *Limits, d *Decision) bool {
	if n := l.total.Add(1); !t.cl.book && lim.MaxConnections > 0 && n > int64(lim.MaxConnections) && l.refuse(d, p, MaxConnections, lim.MaxConnections) {
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
	if !t.cl.book && lim.MaxPerIP > 0 && int(c.total) >= lim.MaxPerIP && l.refuse(d, p, MaxPerIP, lim.MaxPerIP) {
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
	if n := ps.m[t.pk]; !t.cl.book && lim.MaxPerPrefix > 0 && int(n) >= lim.MaxPerPrefix && l.refuse(d, p, MaxPerPrefix, lim.MaxPerPrefix) {
		ps.Unlock()
		return false
	}
	ps.m[t.pk]++
	t.counted |= countedPrefix
	ps.Unlock()

	if !preauthFull {
		return true
	}
	if l.refuse(d, p, MaxPreauthPerIP, lim.MaxPreauthPerIP) {
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

// Release gives back everything the ticket holds. Idempotent.
func (t *Ticket) Release() {
	if t.none() || t.released {
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

// WouldRefuse returns the dry-run count for r.
func (l *Limiter) WouldRefuse(r Reason) uint64 { return l.wouldRefuse[r].Load() }
