package limiter

import (
	"net/netip"
	"strings"
	"time"
)

// reserveUserCluster is ReserveUser with shared state: one call counts the
// user on the address across the cluster (max_per_user_ip) and gives back
// the connection's rate tokens at once, before the login's outcome is
// known; a failed login takes them again (commitUserCluster), so a
// successful session costs no further call for its refund.
func (t *Ticket) reserveUserCluster(user string) Decision {
	l := t.l
	d := Decision{Addr: t.addr, Prefix: t.prefix, User: user}
	if l.local(func() { d = t.reserveUser(user, false) }) {
		return d
	}
	p := l.policy()
	lim, _ := p.limitsFor(t.addr)
	q := &SharedLogin{Addr: t.addr, Prefix: t.prefix, User: strings.ToLower(user), MaxPerUserIP: lim.MaxPerUserIP,
		RefundIP: t.spentIP, RefundPrefix: t.spentPrefix, Now: time.Now()}
	if p.DryRun[MaxPerUserIP] {
		q.DryRun = 1 << MaxPerUserIP
	}
	if q.MaxPerUserIP == 0 && q.RefundIP == 0 && q.RefundPrefix == 0 {
		return d // nothing shared to do; with the limit off, users are not counted
	}
	ctx, cancel := l.ctx()
	defer cancel()
	l.cl.calls.Add(1)
	res, err := l.cl.s.Login(ctx, q)
	if err != nil {
		l.down(err)
		return t.reserveUserCluster(user)
	}
	l.wouldShared(&d, res.WouldRefuse, lim)
	if res.Refused {
		d.Refused, d.Reason, d.Action, d.Limit = true, MaxPerUserIP, p.Action[MaxPerUserIP], res.Limit
		return d
	}
	if q.MaxPerUserIP > 0 {
		t.reserveUser(user, true)
		t.cl.userRemote = true
	}
	t.cl.refundIP, t.cl.refundPrefix = t.spentIP, t.spentPrefix
	t.spentIP, t.spentPrefix = 0, 0
	return d
}

// commitUserCluster is CommitUser with shared state. A failed login gives
// the user's place back and takes again the rate tokens Login gave back.
func (t *Ticket) commitUserCluster(ok bool) {
	l := t.l
	if ok {
		t.cl.refundIP, t.cl.refundPrefix = 0, 0
		return
	}
	user := ""
	if t.hasUser && t.cl.userRemote {
		user = t.user.user
	}
	t.cl.userRemote = false
	refIP, refPrefix := t.cl.refundIP, t.cl.refundPrefix
	if l.releaseOrQueue(t.releaseUserLocal, t.sharedRelease(0, user, time.Now())) {
		t.spentIP, t.spentPrefix = refIP, refPrefix // a later successful login gives them back again
	}
}

// loginSucceededCluster gives back, in the shared state, rate tokens not
// yet given back, and forgets the user's failures there if the address
// had any. It reports false if the shared state is down (the caller goes
// on locally).
func (t *Ticket) loginSucceededCluster(now time.Time, user string) bool {
	l := t.l
	if !l.SharedUp() {
		return false
	}
	q := &SharedLogin{Addr: t.addr, Prefix: t.prefix, User: strings.ToLower(user), RefundIP: t.spentIP,
		RefundPrefix: t.spentPrefix, Forget: t.cl.failures, Now: now}
	t.spentIP, t.spentPrefix = 0, 0
	if q.RefundIP == 0 && q.RefundPrefix == 0 && !q.Forget {
		return true
	}
	ctx, cancel := l.ctx()
	defer cancel()
	l.cl.calls.Add(1)
	if err := l.cl.s.Succeeded(ctx, q); err != nil {
		l.down(err)
	}
	return true
}

// failShared counts a failed login in the shared failure records, once
// per (user, attempt) and ticket: Retried asks first and LoginFailed
// takes the same answer. ok is false if the shared state is down.
func (t *Ticket) failShared(now time.Time, user string, attempt uint64) (SharedFailureResult, bool) {
	if m := t.cl.fail; m != nil && m.user == user && m.attempt == attempt {
		return m.res, true
	}
	l := t.l
	if !l.SharedUp() {
		return SharedFailureResult{}, false
	}
	p := l.policy()
	n := now.UnixNano()
	tier := p.KnownGood.MinUsers > 0
	q := &SharedFailure{Addr: t.addr, Prefix: t.prefix, User: user, Attempt: attempt, Penalty: p.Penalty, Now: now,
		Shared:     l.goodIP.shared(t.k, l.userHash(user), n, int64(p.Penalty.Window), tier),
		PrefixGood: tier && l.goodPrefix.good(t.pk.addr, n)}
	ctx, cancel := l.ctx()
	defer cancel()
	l.cl.calls.Add(1)
	res, err := l.cl.s.Failure(ctx, q)
	if err != nil {
		l.down(err)
		return SharedFailureResult{}, false
	}
	if res.Ban != nil {
		l.ApplyBan(*res.Ban)
	}
	t.cl.fail = &failMemo{user: user, attempt: attempt, res: res}
	return res, true
}

// loginFailedCluster is LoginFailed from the shared failure records; ok
// is false if the shared state is down.
func (t *Ticket) loginFailedCluster(now time.Time, user string, attempt uint64, pen *Penalty) (time.Duration, *Ban, bool) {
	res, ok := t.failShared(now, user, attempt)
	if !ok {
		return 0, nil, false
	}
	t.cl.fail = nil
	l := t.l
	p := l.policy()
	count := res.AddrCount
	if l.goodIP.shared(t.k, l.userHash(user), now.UnixNano(), int64(pen.Window), p.KnownGood.MinUsers > 0) {
		count = res.UserCount
	}
	var delay time.Duration
	if pen.Delay > 0 && count > 1 {
		delay = min(time.Duration(count-1)*pen.Delay, pen.MaxDelay)
	}
	if res.Retried {
		return delay, nil, true
	}
	return delay, res.Ban, true
}

// ApplyBan puts a ban made elsewhere (another node, the shared store) in
// force on this node, unless a ban on the same key lasts longer.
func (l *Limiter) ApplyBan(b Ban) {
	f := l.fails
	until := b.Until.UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.User != "" {
		a := b.Key.Addr().Unmap()
		k := userFailKey(a, l.userHash(b.User))
		if old, ok := f.userBans[k]; ok && old.until >= until {
			return
		}
		makeRoom(f.userBans, f.maxBans, time.Now().UnixNano(), func(b userBan) int64 { return b.until })
		f.userBans[k] = userBan{until: until, addr: a, user: b.User}
		f.nuserBans.Store(int32(len(f.userBans)))
		return
	}
	k := unmapPrefix(b.Key)
	if old, ok := f.bans[k]; ok && old >= until {
		return
	}
	makeRoom(f.bans, f.maxBans, time.Now().UnixNano(), func(until int64) int64 { return until })
	f.bans[k] = until
	f.nbans.Store(int32(len(f.bans)))
}

// ReplaceBans makes bans, the shared store's, the bans in force on this
// node: a ban lifted elsewhere whose message this node missed goes too.
func (l *Limiter) ReplaceBans(bans []Ban) {
	f := l.fails
	f.mu.Lock()
	clear(f.bans)
	clear(f.userBans)
	f.nbans.Store(0)
	f.nuserBans.Store(0)
	f.mu.Unlock()
	for _, b := range bans {
		l.ApplyBan(b)
	}
}

// ApplyUnban and ApplyUnbanUser lift a ban on this node only (a message
// from another node); Unban and UnbanUser lift it everywhere.
func (l *Limiter) ApplyUnban(k netip.Prefix) bool {
	ok, _ := l.unban(k)
	return ok
}

func (l *Limiter) ApplyUnbanUser(a netip.Addr, user string) bool {
	ok, _ := l.unbanUser(a, user)
	return ok
}

// Ban bans an address or network (or a user on an address, with b.User)
// until b.Until: an operator's ban (ctl ban), on every node with shared
// state.
func (l *Limiter) Ban(b Ban) error {
	l.ApplyBan(b)
	if l.cl.s == nil || !l.SharedUp() {
		return nil
	}
	ctx, cancel := l.ctx()
	defer cancel()
	l.cl.calls.Add(1)
	if err := l.cl.s.Ban(ctx, b); err != nil {
		l.down(err)
		return err
	}
	return nil
}

// sharedUnban lifts a ban (u) in the shared state too; while that is
// down, the unban waits for Republish, so the stored ban does not come
// back when Redis answers again, and the bans it lifted here (lifted)
// go with it: other nodes, which still hold them, must not store them
// again when they republish (Snapshot.Lifted).
func (l *Limiter) sharedUnban(u Ban, lifted []Ban, f func(Shared) error) {
	if l.cl.s == nil {
		return
	}
	if l.SharedUp() {
		l.cl.calls.Add(1)
		err := f(l.cl.s)
		if err == nil {
			return
		}
		l.down(err)
	}
	l.cl.unbansMu.Lock()
	l.cl.unbans = append(l.cl.unbans, u)
	l.cl.lifted = append(l.cl.lifted, lifted...)
	l.cl.unbansMu.Unlock()
}
