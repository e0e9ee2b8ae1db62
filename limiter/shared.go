package limiter

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Shared is the state several imapgate replicas share (package cluster
// keeps it in Redis): the concurrency counts (each node's contribution),
// the new-connection rates, the failure records and the bans. A Limiter
// without one (the default) keeps all of it in its own memory, as a single
// imapgate does; see SetShared.
//
// Every call carries a deadline in ctx. An error makes the Limiter
// degrade: it calls Down once and applies its limits to this node's own
// counts until the Shared calls Limiter.Republish.
type Shared interface {
	// Admit checks every shared limit of a new connection and takes its
	// places in all the counts and rate buckets, or in none.
	Admit(ctx context.Context, q *SharedAdmit) (SharedResult, error)
	// Release gives back places taken by Admit or Login, and re-spends
	// rate tokens that Login gave back for a login that then failed.
	Release(ctx context.Context, q *SharedRelease) error
	// Login takes a place for a user on an address (max_per_user_ip) and
	// gives back the connection's rate tokens.
	Login(ctx context.Context, q *SharedLogin) (SharedResult, error)
	// Succeeded forgets the user's failures on the address and gives back
	// rate tokens not yet given back.
	Succeeded(ctx context.Context, q *SharedLogin) error
	// Failure counts a failed login and applies the ban rules of Penalty
	// to the shared failure records; a ban it starts is stored and
	// published to every node.
	Failure(ctx context.Context, q *SharedFailure) (SharedFailureResult, error)
	// Ban stores and publishes a ban; Unban and UnbanUser lift bans (and
	// forget the failures behind them) on every node.
	Ban(ctx context.Context, b Ban) error
	Unban(ctx context.Context, k netip.Prefix) error
	UnbanUser(ctx context.Context, a netip.Addr, user string) error
	// Publish replaces this node's share of the counts with s, and stores
	// the bans in s that the shared state lacks.
	Publish(ctx context.Context, s *Snapshot) error
	// Down is told, once per outage, why the shared state is unreachable.
	Down(err error)
}

// SharedAdmit is one admission for Shared.Admit.
type SharedAdmit struct {
	Addr   netip.Addr
	Prefix netip.Prefix
	Exempt bool // counted in the total only, no rates
	// Limits are those of this connection (override, known-good tier);
	// MaxPreauthPerIP and MaxPerUserIP are not checked here.
	Limits Limits
	DryRun uint16 // bit r: limit r only records WouldRefuse
	Now    time.Time
}

// SharedResult is the answer of Shared.Admit and Shared.Login.
type SharedResult struct {
	Refused     bool
	Reason      Reason
	Limit       int
	WouldRefuse uint16
	// RetryAt is, for a rate refusal, when the bucket has a token again.
	RetryAt time.Time
	// Failures: the address has failed logins on record (Admit), so a
	// successful login must forget the user's.
	Failures bool
}

// SharedRelease gives back places and tokens.
type SharedRelease struct {
	Addr                     netip.Addr
	Prefix                   netip.Prefix
	Total, IP, InPrefix      bool
	User                     string // lower case; "" for none
	RespendIP, RespendPrefix int64  // nanoseconds of refill to take again
	Now                      time.Time
}

// SharedLogin is a login for Shared.Login and Shared.Succeeded.
type SharedLogin struct {
	Addr                   netip.Addr
	Prefix                 netip.Prefix
	User                   string // lower case
	MaxPerUserIP           int    // 0: not counted
	DryRun                 uint16
	RefundIP, RefundPrefix int64 // nanoseconds of refill to give back
	Forget                 bool  // Succeeded: forget the user's failures
	Now                    time.Time
}

// SharedFailure is a failed login for Shared.Failure.
type SharedFailure struct {
	Addr       netip.Addr
	Prefix     netip.Prefix
	User       string // as given
	Attempt    uint64 // AttemptKey, 0 if unknown
	Penalty    Penalty
	Shared     bool // another user logged in from Addr lately, or it is known-good (this node's view)
	PrefixGood bool
	Now        time.Time
}

// SharedFailureResult is the answer of Shared.Failure.
type SharedFailureResult struct {
	Retried              bool // the attempt had failed before: not counted
	UserCount, AddrCount int
	Ban                  *Ban
}

// Snapshot is this node's share: its live connections counted per
// address, prefix and user, and the bans in force here.
type Snapshot struct {
	Total    int
	Addrs    map[netip.Addr]int
	Prefixes map[netip.Prefix]int
	Users    []UserCount
	Bans     []Ban
	// Unbans are the operator's unbans made while the shared state was
	// down (User set: a user+address ban), to lift there before Bans are
	// stored.
	Unbans []Ban
}

// UserCount is a user's sessions from one address.
type UserCount struct {
	Addr netip.Addr
	User string
	N    int
}

// clusterState is a Limiter's link to its Shared state.
type clusterState struct {
	s Shared
	// mu orders degraded-mode changes of the local counts against
	// Republish: such changes happen under the read lock and bump dirty;
	// Republish switches up on under the write lock only if dirty did not
	// move since its snapshot.
	mu    sync.RWMutex
	up    bool
	dirty atomic.Uint64
	// hold is how long a concurrency refusal by the shared counts is
	// remembered for the address (or prefix, or all) on this node.
	hold  time.Duration
	over  *overTable
	hits  atomic.Uint64 // refusals answered from over without a round trip
	calls atomic.Uint64 // shared calls made
	fails atomic.Uint64 // shared calls failed
	// timeout bounds calls made without a caller's context (Release).
	timeout time.Duration
	// unbans made while down, for the next Republish.
	unbansMu sync.Mutex
	unbans   []Ban
}

// ticketCluster is what a ticket holds in the shared state.
type ticketCluster struct {
	book    bool // counted without local checks: the shared counts decide
	pending bool // Confirm has not asked the shared state yet
	remote  bool // places counted in the shared state
	// refundIP, refundPrefix: tokens Login gave back before the login's
	// outcome was known; a failed login takes them again.
	refundIP, refundPrefix int64
	failures               bool // the address had failures on record
	userRemote             bool
	fail                   *failMemo
}

// failMemo keeps Retried's shared answer for the LoginFailed that follows.
type failMemo struct {
	user    string
	attempt uint64
	res     SharedFailureResult
}

// SetShared makes l share its counts, rates, failures and bans through s,
// degraded (local limits) until s calls Republish. hold is how long a
// refusal by a shared concurrency limit is remembered on this node, so a
// flood from one address costs no round trip per attempt; timeout bounds
// calls that have no caller's deadline. Call it before the first Admit.
func (l *Limiter) SetShared(s Shared, hold, timeout time.Duration) {
	l.cl.s = s
	l.cl.hold = hold
	l.cl.timeout = timeout
	l.cl.over = newOverTable(1 << 16)
}

// SharedUp reports whether the shared state is in use (false without one,
// or while degraded).
func (l *Limiter) SharedUp() bool {
	if l.cl.s == nil {
		return false
	}
	l.cl.mu.RLock()
	defer l.cl.mu.RUnlock()
	return l.cl.up
}

// SharedStats are counters for metrics: refusals answered from the local
// over-limit cache, shared calls made and failed.
func (l *Limiter) SharedStats() (cacheHits, calls, failures uint64) {
	return l.cl.hits.Load(), l.cl.calls.Load(), l.cl.fails.Load()
}

// SharedFailed switches to local limits: the Shared found its state
// unreachable, or lost (Redis restarted empty), outside a limiter call.
func (l *Limiter) SharedFailed(err error) {
	if l.cl.s != nil {
		l.down(err)
	}
}

// down switches to local limits after a failed shared call.
func (l *Limiter) down(err error) {
	l.cl.fails.Add(1)
	l.cl.mu.Lock()
	was := l.cl.up
	l.cl.up = false
	l.cl.mu.Unlock()
	if was {
		l.cl.s.Down(err)
	}
}

// local runs f, a change of the local counts, if the shared state is
// down, and reports whether it did: then the change is this node's alone
// and Republish will carry it.
func (l *Limiter) local(f func()) bool {
	l.cl.mu.RLock()
	defer l.cl.mu.RUnlock()
	if l.cl.up {
		return false
	}
	f()
	l.cl.dirty.Add(1)
	return true
}

func (l *Limiter) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), l.cl.timeout)
}

// Republish hands this node's share to the shared state (Shared.Publish)
// and, once the share published is the one in force, switches from local
// limits back to the shared ones. The Shared calls it when it answers
// again; ctx bounds each attempt.
func (l *Limiter) Republish(ctx context.Context, now time.Time) error {
	for attempt := 0; ; attempt++ {
		d0 := l.cl.dirty.Load()
		s := l.snapshot(now)
		if err := l.cl.s.Publish(ctx, s); err != nil {
			return err
		}
		l.cl.unbansMu.Lock()
		l.cl.unbans = l.cl.unbans[len(s.Unbans):]
		l.cl.unbansMu.Unlock()
		l.cl.mu.Lock()
		if l.cl.dirty.Load() == d0 || attempt >= 4 {
			// After five tries under constant churn the share is off by
			// the few changes of the last try; the next republish
			// corrects it.
			l.cl.up = true
			l.cl.mu.Unlock()
			return nil
		}
		l.cl.mu.Unlock()
	}
}

// snapshot reads this node's counts and bans.
func (l *Limiter) snapshot(now time.Time) *Snapshot {
	s := &Snapshot{Total: l.Total(), Addrs: map[netip.Addr]int{}, Prefixes: map[netip.Prefix]int{}}
	for i := range l.ips {
		sh := &l.ips[i]
		sh.Lock()
		for k, c := range sh.m {
			if c.total > 0 {
				s.Addrs[netip.AddrFrom16(k).Unmap()] = int(c.total)
			}
		}
		sh.Unlock()
		ps := &l.prefixes[i]
		ps.Lock()
		for k, n := range ps.m {
			if n > 0 {
				s.Prefixes[netip.PrefixFrom(netip.AddrFrom16(k.addr).Unmap(), int(k.bits))] = int(n)
			}
		}
		ps.Unlock()
		us := &l.users[i]
		us.Lock()
		for k, n := range us.m {
			if n > 0 {
				s.Users = append(s.Users, UserCount{Addr: k.addr, User: k.user, N: int(n)})
			}
		}
		us.Unlock()
	}
	s.Bans = l.Bans(now)
	l.cl.unbansMu.Lock()
	s.Unbans = append([]Ban(nil), l.cl.unbans...)
	l.cl.unbansMu.Unlock()
	return s
}

// admitCluster is Admit with shared state: local limits while it is
// down; else the local checks (lists, bans, the over-limit cache) and this
// node's bookkeeping, leaving the shared limits to Confirm.
func (l *Limiter) admitCluster(client netip.Addr, now time.Time) (t *Ticket, d Decision) {
	if l.local(func() { t, d = l.admit(client, now, false) }) {
		return t, d
	}
	t, d = l.admit(client, now, true)
	if t != nil {
		t.cl.pending = true
	}
	return t, d
}

// overLimit answers from the over-limit cache: a refusal by a shared
// limit remembered for the address, its prefix or all connections.
func (l *Limiter) overLimit(t *Ticket, p *Policy, now time.Time, d *Decision) bool {
	n := now.UnixNano()
	for _, k := range [3]overKey{{kind: overAll}, {kind: overPrefix, k: t.pk.addr, bits: t.pk.bits}, {kind: overAddr, k: t.k}} {
		if k.kind != overAll && t.exempt {
			continue
		}
		if r, limit, ok := l.cl.over.get(k, n); ok && l.refuse(d, p, r, limit) {
			l.cl.hits.Add(1)
			return true
		}
	}
	return false
}

// remember notes a shared refusal in the over-limit cache: a rate refusal
// until the bucket has a token, a concurrency refusal for hold (or until
// a connection of this node from there ends).
func (l *Limiter) remember(t *Ticket, res SharedResult, now time.Time) {
	until := now.Add(l.cl.hold)
	if !res.RetryAt.IsZero() {
		until = res.RetryAt
	}
	var k overKey
	switch res.Reason {
	case MaxConnections:
		k = overKey{kind: overAll}
	case MaxPerPrefix, RatePerPrefix:
		k = overKey{kind: overPrefix, k: t.pk.addr, bits: t.pk.bits}
	case MaxPerIP, RatePerIP:
		k = overKey{kind: overAddr, k: t.k}
	default:
		return
	}
	l.cl.over.put(k, until.UnixNano(), res.Reason, res.Limit)
}

// Confirm asks the shared state, for a ticket Admit left pending, whether
// the connection is within the shared limits, and takes its places there;
// d is Admit's decision, which it returns updated. Without shared state,
// or for a ticket admitted under local limits, it returns d as it is. A
// refusal releases the ticket. If the shared state cannot answer by ctx's
// deadline (or the cluster timeout), the limiter degrades and decides by
// its local limits.
func (t *Ticket) Confirm(ctx context.Context, now time.Time, d Decision) Decision {
	if t.none() || !t.cl.pending {
		return d
	}
	t.cl.pending = false
	l := t.l
	p := l.policy()
	lim := t.limits(p)
	q := &SharedAdmit{Addr: t.addr, Prefix: t.prefix, Exempt: t.exempt, Limits: lim, Now: now}
	for r := range p.DryRun {
		if p.DryRun[r] {
			q.DryRun |= 1 << r
		}
	}
	ctx, cancel := context.WithTimeout(ctx, l.cl.timeout)
	defer cancel()
	l.cl.calls.Add(1)
	res, err := l.cl.s.Admit(ctx, q)
	if err != nil {
		l.down(err)
		// Decide again under the local limits, from scratch.
		t.releaseLocal()
		nt, nd := l.admitCluster(t.addr, now)
		nd.WouldRefuse |= d.WouldRefuse
		nd.WouldLimit = d.WouldLimit
		if nt == nil {
			nt = &Ticket{} // refused: holds nothing
		}
		*t = *nt
		return nd
	}
	l.wouldShared(&d, res.WouldRefuse, &lim)
	if res.Refused {
		l.remember(t, res, now)
		t.releaseLocal()
		t.released = true
		d.Refused, d.Reason, d.Action, d.Limit = true, res.Reason, p.Action[res.Reason], res.Limit
		return d
	}
	t.cl.remote = true
	t.cl.failures = res.Failures
	if !t.exempt {
		if r := lim.RatePerIP; r.enabled() {
			t.spentIP = r.interval()
		}
		if r := lim.RatePerPrefix; r.enabled() {
			t.spentPrefix = r.interval()
		}
	}
	return d
}

// wouldShared adds to d the shared limits in dry run that would have
// refused (bits), counted and with their values as the local ones are.
func (l *Limiter) wouldShared(d *Decision, bits uint16, lim *Limits) {
	fresh := bits &^ d.WouldRefuse
	for r := Reason(0); r < NumReasons; r++ {
		if fresh&(1<<r) != 0 {
			l.wouldRefuse[r].Add(1)
			d.WouldLimit[r] = int32(lim.value(r))
		}
	}
	d.WouldRefuse |= fresh
}

// value is the limit r's value in l (a rate's burst).
func (l *Limits) value(r Reason) int {
	switch r {
	case MaxConnections:
		return l.MaxConnections
	case MaxPerIP:
		return l.MaxPerIP
	case MaxPerPrefix:
		return l.MaxPerPrefix
	case MaxPreauthPerIP:
		return l.MaxPreauthPerIP
	case MaxPerUserIP:
		return l.MaxPerUserIP
	case RatePerIP:
		return l.RatePerIP.Burst
	case RatePerPrefix:
		return l.RatePerPrefix.Burst
	}
	return 0
}

// releaseLocal gives back the ticket's places in this node's counts only.
func (t *Ticket) releaseLocal() {
	if !t.l.local(t.releaseCounts) {
		t.releaseCounts()
	}
}

// releaseCluster is Release with shared state: this node's counts, and
// the shared counts unless the shared state is down (then Republish
// carries the change) or the ticket was never confirmed there.
func (t *Ticket) releaseCluster() {
	l := t.l
	counted, pending := t.counted, t.cl.pending
	user := ""
	if t.hasUser && t.cl.userRemote {
		user = t.user.user
	}
	if counted&countedIP != 0 {
		l.cl.over.forget(overKey{kind: overAddr, k: t.k})
	}
	if counted&countedPrefix != 0 {
		l.cl.over.forget(overKey{kind: overPrefix, k: t.pk.addr, bits: t.pk.bits})
	}
	if counted&countedTotal != 0 {
		l.cl.over.forget(overKey{kind: overAll})
	}
	if l.local(t.releaseCounts) {
		return
	}
	t.releaseCounts()
	if !pending {
		t.releaseShared(counted, user, time.Now())
	}
}

// releaseShared gives back, in the shared state, what a ticket held
// there, after the local release.
func (t *Ticket) releaseShared(counted uint8, user string, now time.Time) {
	l := t.l
	q := &SharedRelease{Addr: t.addr, Prefix: t.prefix, User: user, Now: now,
		Total: counted&countedTotal != 0, IP: counted&countedIP != 0, InPrefix: counted&countedPrefix != 0,
		RespendIP: t.cl.refundIP, RespendPrefix: t.cl.refundPrefix}
	if !q.Total && !q.IP && !q.InPrefix && q.User == "" && q.RespendIP == 0 && q.RespendPrefix == 0 {
		return
	}
	t.cl.refundIP, t.cl.refundPrefix = 0, 0
	ctx, cancel := l.ctx()
	defer cancel()
	l.cl.calls.Add(1)
	if err := l.cl.s.Release(ctx, q); err != nil {
		l.down(err)
	}
}

// overTable remembers refusals by shared limits: set-associative like
// rateTable, bounded, one mutex per shard.
type overTable struct {
	shards [numShards]overShard
}

type overKind uint8

const (
	overAll overKind = iota + 1
	overPrefix
	overAddr
)

type overKey struct {
	kind overKind
	bits uint8
	k    key
}

type overShard struct {
	sync.Mutex
	sets [][ways]overWay
}

type overWay struct {
	key    overKey
	until  int64
	reason Reason
	limit  int32
}

func newOverTable(size int) *overTable {
	t := &overTable{}
	per := max(size/numShards/ways, 1)
	for i := range t.shards {
		t.shards[i].sets = make([][ways]overWay, per)
	}
	return t
}

func (t *overTable) locate(k overKey) (*overShard, int) {
	h := uint64(k.kind)*0x9e3779b97f4a7c15 ^ uint64(k.bits)
	for _, b := range k.k {
		h = (h ^ uint64(b)) * 0x100000001b3
	}
	s := &t.shards[h%numShards]
	return s, int((h >> 8) % uint64(len(s.sets)))
}

func (t *overTable) get(k overKey, n int64) (Reason, int, bool) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	for w := range s.sets[i] {
		if way := &s.sets[i][w]; way.key == k && way.until > n {
			return way.reason, int(way.limit), true
		}
	}
	return 0, 0, false
}

func (t *overTable) put(k overKey, until int64, r Reason, limit int) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	set := &s.sets[i]
	w := 0
	for j := range set {
		if set[j].key == k {
			w = j
			break
		}
		if set[j].until < set[w].until {
			w = j
		}
	}
	set[w] = overWay{key: k, until: until, reason: r, limit: int32(limit)}
}

// forget drops k: a connection counted under it ended on this node, so a
// place may be free again.
func (t *overTable) forget(k overKey) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	for w := range s.sets[i] {
		if s.sets[i][w].key == k {
			s.sets[i][w] = overWay{}
		}
	}
}
