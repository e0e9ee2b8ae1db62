package limiter

import (
	"errors"
	"math"
	"sync"
	"time"
)

// Releases to the shared state go in batches: a release changes this
// node's counts at once and queues its shared part; the queue is sent as
// one Shared.Release call ReleaseWindow after its first entry, or sooner
// with the next admission Confirm sends (SharedAdmit.Releases), whichever
// comes first. The session's goroutine never waits for it.
//
// The rule that keeps the shared counts right: this node's share in the
// shared state equals its local counts, less the releases queued or in
// flight. A release is queued only while up, under the read lock of
// clusterState.mu, together with its local change, so neither a switch to
// local limits (down) nor Republish's switch back falls between the two.
// down drops the queue (its releases are in the local counts, which the
// next Republish publishes), and Republish waits for the batches in
// flight before it publishes: a batch that failed, or that Redis applied
// although its caller gave up, is overwritten by the republished share;
// none is applied after it. So a release is sent once or carried by a
// republish, never both, and never lost.

// ReleaseWindow is how long a release waits for others to share its
// Shared.Release call (at most; an admission takes the queue sooner).
// Long enough that on a busy node nearly every release rides on the
// next admission instead of a call of its own (measured with imapbench's
// cluster scenario, 8 sessions at a time over 2 replicas: Redis calls
// per admitted session 1.07 with 20 ms, 1.50 with 1 ms; the replicas'
// CPU per session 0.91–0.94 of 1 ms's in the same runs), short enough
// that another replica refusing for a place freed meanwhile stays
// rarer than a client's own reconnect: this node's next admission
// carries its releases, so it never does.
const ReleaseWindow = 20 * time.Millisecond

// maxReleaseBatch bounds the releases of one Shared.Release call; a
// longer queue goes in several calls.
const maxReleaseBatch = 256

var errDetached = errors.New("shared state detached (node closing)")

// releaseQueue holds the releases not sent yet and counts the batches in
// flight.
type releaseQueue struct {
	mu       sync.Mutex
	idle     sync.Cond // a batch was answered
	pending  []*SharedRelease
	armed    bool                // a flush is scheduled
	seq      uint64              // batches taken so far
	flying   map[uint64]struct{} // batches taken (by number), not answered yet
	waiters  int                 // in waitReleases or waitFlights (for tests)
	window   time.Duration
	detached bool // DetachShared: nothing is queued any more
	// after schedules f after d (time.AfterFunc; tests replace it).
	after func(d time.Duration, f func())
}

func (q *releaseQueue) init(window time.Duration) {
	q.idle.L = &q.mu
	q.flying = map[uint64]struct{}{}
	q.window = window
	q.after = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
}

// queue adds r; the caller holds the read lock of clusterState.mu and
// saw up.
func (l *Limiter) queueRelease(r *SharedRelease) {
	q := &l.cl.rq
	q.mu.Lock()
	q.pending = append(q.pending, r)
	arm := !q.armed
	q.armed = true
	q.mu.Unlock()
	if arm {
		q.after(q.window, l.flushTimer)
	}
}

// takeReleases takes up to n releases of the queue for a call, in
// flight under the number id until releasesDone(id); nil if the queue is
// empty.
func (l *Limiter) takeReleases(n int) (b []*SharedRelease, id uint64) {
	q := &l.cl.rq
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		return nil, 0
	}
	n = min(n, len(q.pending))
	b = q.pending[:n:n]
	q.pending = q.pending[n:]
	if len(q.pending) == 0 {
		q.pending = nil
	}
	q.seq++
	q.flying[q.seq] = struct{}{}
	return b, q.seq
}

// releasesDone ends batch id of takeReleases.
func (l *Limiter) releasesDone(id uint64) {
	q := &l.cl.rq
	q.mu.Lock()
	delete(q.flying, id)
	q.idle.Broadcast()
	q.mu.Unlock()
}

// flightMark is the number of the last batch taken, and whether any
// batch is in flight.
func (l *Limiter) flightMark() (mark uint64, flying bool) {
	q := &l.cl.rq
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.seq, len(q.flying) > 0
}

// waitFlights waits until every batch numbered up to mark is answered
// (each call has the cluster deadline); later batches do not hold it up.
func (l *Limiter) waitFlights(mark uint64) {
	q := &l.cl.rq
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiters++
	defer func() { q.waiters-- }()
	for {
		older := false
		for id := range q.flying {
			if id <= mark {
				older = true
				break
			}
		}
		if !older {
			return
		}
		q.idle.Wait()
	}
}

// dropReleases forgets the queue: the caller switched to local limits,
// and the next Republish carries these releases in the local counts.
func (l *Limiter) dropReleases() {
	q := &l.cl.rq
	q.mu.Lock()
	q.pending = nil
	q.mu.Unlock()
}

// waitReleases waits until no batch is in flight (each call has the
// cluster deadline).
func (l *Limiter) waitReleases() { l.waitFlights(math.MaxUint64) }

// flushTimer runs ReleaseWindow after a release found the queue unarmed.
func (l *Limiter) flushTimer() {
	q := &l.cl.rq
	q.mu.Lock()
	q.armed = false
	q.mu.Unlock()
	l.flushReleases()
}

// flushReleases sends the queue, maxReleaseBatch releases a call; a
// failed call switches to local limits (and drops the rest of the
// queue).
func (l *Limiter) flushReleases() {
	for {
		b, id := l.takeReleases(maxReleaseBatch)
		if b == nil {
			return
		}
		ctx, cancel := l.ctx()
		l.cl.calls.Add(1)
		err := l.cl.s.Release(ctx, b)
		cancel()
		if err != nil {
			l.down(err)
		}
		l.releasesDone(id)
		if err != nil {
			return
		}
	}
}

// releaseOrQueue runs f, a release in this node's counts, and, if the
// shared state is up, queues r (nil: nothing shared to give back), both
// under the read lock; while down only f runs and Republish carries it.
func (l *Limiter) releaseOrQueue(f func(), r *SharedRelease) (up bool) {
	l.cl.mu.RLock()
	defer l.cl.mu.RUnlock()
	f()
	if !l.cl.up {
		l.cl.dirty.Add(1)
		return false
	}
	if r != nil {
		l.queueRelease(r)
	}
	return true
}

// DetachShared is for a node that is closing: it switches to local limits
// for good (without Shared.Down; Republish then fails), sends the queued
// releases at once and waits for every batch in flight, each bounded by
// the cluster deadline. Call it before the Shared's connection closes.
func (l *Limiter) DetachShared() {
	if l.cl.s == nil {
		return
	}
	l.cl.mu.Lock()
	l.cl.rq.mu.Lock()
	l.cl.rq.detached = true
	l.cl.rq.mu.Unlock()
	wasUp := l.cl.up
	l.cl.up = false
	l.cl.mu.Unlock()
	if wasUp {
		l.flushReleases()
	}
	l.waitReleases()
}

// detached reports whether DetachShared was called.
func (l *Limiter) detached() bool {
	q := &l.cl.rq
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.detached
}

// quiesceReleases prepares Republish: local limits (if not already), the
// queue dropped (the snapshot to publish has its releases), and no batch
// in flight, so none lands after the publish.
func (l *Limiter) quiesceReleases() error {
	l.cl.mu.Lock()
	l.cl.up = false
	l.cl.rq.mu.Lock()
	detached := l.cl.rq.detached
	l.cl.rq.pending = nil
	l.cl.rq.mu.Unlock()
	l.cl.mu.Unlock()
	if detached {
		return errDetached
	}
	l.waitReleases()
	return nil
}

// sharedRelease is what the ticket gives back in the shared state (the
// places in counted, the user's place if user is set, and the tokens a
// failed login takes again); nil if nothing. It clears the ticket's
// refunds.
func (t *Ticket) sharedRelease(counted uint8, user string, now time.Time) *SharedRelease {
	q := &SharedRelease{Addr: t.addr, Prefix: t.prefix, User: user, Now: now,
		Total: counted&countedTotal != 0, IP: counted&countedIP != 0, InPrefix: counted&countedPrefix != 0,
		RespendIP: t.cl.refundIP, RespendPrefix: t.cl.refundPrefix}
	t.cl.refundIP, t.cl.refundPrefix = 0, 0
	if !q.Total && !q.IP && !q.InPrefix && q.User == "" && q.RespendIP == 0 && q.RespendPrefix == 0 {
		return nil
	}
	return q
}
