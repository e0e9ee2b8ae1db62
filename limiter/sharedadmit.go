package limiter

import (
	"context"
	"net/netip"
	"time"
)

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

// Pending reports whether Confirm still has shared limits to ask about
// (a ticket Admit left pending, with [cluster]): the connection must reach
// Confirm before anything else is done for it. False for a nil ticket.
func (t *Ticket) Pending() bool { return !t.none() && t.cl.pending }

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
	// This node's queued releases ride along (applied before the check).
	// A release batch already in flight may reach the shared state after
	// this call: if the shared counts then refuse, ask once more when
	// those batches are answered, so a place freed on this node before
	// Confirm is never refused (nor the refusal remembered).
	mark, others := l.flightMark()
	var id uint64
	q.Releases, id = l.takeReleases(maxReleaseBatch)
	ctx, cancel := context.WithTimeout(ctx, l.cl.timeout)
	defer cancel()
	l.cl.calls.Add(1)
	res, err := l.cl.s.Admit(ctx, q)
	if err == nil && others && res.Refused && res.RetryAt.IsZero() {
		l.waitFlights(mark)
		q.Releases = nil // applied by the first call
		l.cl.calls.Add(1)
		res, err = l.cl.s.Admit(ctx, q)
	}
	if err != nil {
		l.down(err)
	}
	if id != 0 {
		l.releasesDone(id)
	}
	if err != nil {
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
// the shared counts (queued, see ReleaseWindow) unless the shared state is
// down (then Republish carries the change) or the ticket was never
// confirmed there.
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
	var r *SharedRelease
	if !pending {
		r = t.sharedRelease(counted, user, time.Now())
	}
	l.releaseOrQueue(t.releaseCounts, r)
}
