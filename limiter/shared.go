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
	// Release gives back, in one atomic call and in order, the places
	// that the releases in qs name (taken by Admit or Login), and
	// re-spends rate tokens that Login gave back for a login that then
	// failed. Either all of qs is applied or, with an error, possibly
	// none: the Limiter then degrades and Republish corrects the counts.
	Release(ctx context.Context, qs []*SharedRelease) error
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
	// KnownGood hands the other nodes an address (a host prefix) or an
	// aggregation prefix that logins here made known-good until `until`
	// (they apply it with Limiter.LearnKnownGood). It must not block: it
	// queues, and an update lost to an outage goes again when the tier's
	// time next moves (within a 24th of its window).
	KnownGood(k netip.Prefix, until time.Time)
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
	// Releases are this node's releases not sent yet (see
	// ReleaseWindow), applied as Release would apply them, in the same
	// atomic call, before the limits are checked; nil for none.
	Releases []*SharedRelease
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
	// stored. Lifted are the bans they lifted on this node, with their
	// Until: a node that still holds one of them (it did not hear of the
	// unban) must not store it again when it republishes; a later ban on
	// the same key (a later Until) it may.
	Unbans []Ban
	Lifted []Ban
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
	lifted   []Ban // the bans those unbans lifted here
	// rq: releases waiting to be sent, batches in flight.
	rq releaseQueue
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
	l.cl.rq.init(ReleaseWindow)
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

// SharedDegraded reports whether there is a shared state and it is not in
// use now: a ban or unban made meanwhile applies on this node at once and
// reaches the shared state (the other nodes) only once it answers again.
func (l *Limiter) SharedDegraded() bool { return l.cl.s != nil && !l.SharedUp() }

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

// down switches to local limits after a failed shared call, and drops
// the releases not sent yet (the next Republish carries them).
func (l *Limiter) down(err error) {
	l.cl.fails.Add(1)
	l.cl.mu.Lock()
	was := l.cl.up
	l.cl.up = false
	l.dropReleases()
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
// again; ctx bounds each attempt. It first switches to local limits (if
// it was up), drops the releases not sent and waits for the release
// batches in flight (each bounded by the cluster deadline), so that no
// release lands after the share it publishes. After DetachShared it
// fails.
func (l *Limiter) Republish(ctx context.Context, now time.Time) error {
	if err := l.quiesceReleases(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		d0 := l.cl.dirty.Load()
		s := l.snapshot(now)
		if err := l.cl.s.Publish(ctx, s); err != nil {
			return err
		}
		l.cl.unbansMu.Lock()
		l.cl.unbans = l.cl.unbans[len(s.Unbans):]
		l.cl.lifted = l.cl.lifted[len(s.Lifted):]
		l.cl.unbansMu.Unlock()
		l.cl.mu.Lock()
		if l.detached() {
			l.cl.mu.Unlock()
			return errDetached
		}
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
	s.Lifted = append([]Ban(nil), l.cl.lifted...)
	l.cl.unbansMu.Unlock()
	return s
}
