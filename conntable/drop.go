package conntable

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"imapgate/courierlog"
)

// Early drop, when the table is full, takes the unassured entry near the
// new one that has made the least progress, in this order:
//
//  1. Silent entries (nothing whole from the client since accept: no
//     byte, or half a ClientHello) older than silentGrace, the one with
//     the highest age × silent entries its address holds first: an
//     address holding many silent entries loses them first.
//  2. Stalled entries: they have heard from their client, and the owner
//     has been waiting for the client's next byte for at least
//     movingWindow (Entry.Waiting); the longest stalled first.
//  3. Silent entries younger than silentGrace, ranked as in 1: an honest
//     client's ClientHello may not have been read yet, and being the
//     youngest, with one entry, it is the last of them.
//  4. Only when every candidate is moving: the one waiting longest for
//     its client, and last of all one whose owner is busy with what the
//     client sent (a handshake being computed, the upstream being asked).
//     The newcomer is refused only when there is no unassured entry at
//     all: it has made no progress either, but refusing is certain to
//     fail it, where the drop most likely takes part of a burst.
//
// Stall is time spent waiting on the client, never on the server: an
// honest handshake or login waits a round trip for each answer however
// slow the server is under a flood, so it ranks behind every silent and
// stalled entry near it. A candidate is never taken in the middle of a
// write of the server's (a kill's deadline would cut the record): a
// silent or stalled client is one the server is waiting to read from, and
// the session sends no close_notify after a failed write
// (proxy/session.go).
//
// The kernel takes the oldest unassured entry of the first bucket that has
// one (conntrack's early_drop); a flood of silent connections makes the
// oldest entry near a new one, as often as not, an honest client in the
// middle of its handshake.

// movingWindow: an entry whose owner has waited on its client for less
// than this is moving: a client answers each of the server's records
// within a round trip and its own CPU time, and a second covers slow
// mobile and satellite links.
const movingWindow = time.Second

// silentGrace: a silent entry younger than this may be an honest client
// whose ClientHello arrived right behind the TCP handshake but has not
// been read yet (its goroutine waits for a CPU under the flood).
const silentGrace = 100 * time.Millisecond

// rank orders candidates: a higher class wins, then a higher score.
type rank struct {
	class int8 // 4 killed already, 3 silent, 2 stalled, 1 silent and young, 0 moving
	score int64
}

func (r rank) beats(o rank) bool {
	return r.class > o.class || (r.class == o.class && r.score > o.score)
}

// rankOf ranks e as an early-drop victim at now (unix nanoseconds); ok is
// false if e may not be dropped (assured now or before). An entry already
// killed (a timeout, an administrator) whose owner has not yet removed it
// ranks above all: unlinking it frees its slot without another kill, as
// conntrack's GC reclaims dying entries. The bucket's shard lock is held.
func (t *Table) rankOf(e *Entry, now int64) (r rank, ok bool) {
	if e.Killed() != NotKilled {
		return rank{4, 0}, true // dying: its owner has yet to Remove it
	}
	if e.Assured() {
		return rank{}, false
	}
	if !e.Heard() {
		age := max(now-e.stateSince.Load(), 0)
		score := (age/int64(time.Millisecond) + 1) * int64(max(t.silentCount(e.Client.Addr()), 1))
		if age < int64(silentGrace) {
			return rank{1, score}, true
		}
		return rank{3, score}, true
	}
	w := e.waitFrom.Load()
	if w == 0 {
		return rank{0, -1}, true // busy with what its client sent
	}
	stall := max(now-w, 0)
	if stall < int64(movingWindow) {
		return rank{0, stall}, true
	}
	return rank{2, stall}, true
}

// dropNear early-drops the least-progressed unassured entry within
// evictionRange buckets from b. It reports false if there is none (or it
// lost every race for one).
func (t *Table) dropNear(b uint32) bool {
	n := uint32(len(t.buckets))
	for try := 0; try < 8; try++ { // concurrent inserts may take the same victim first
		now := t.clock.Load()
		var best *Entry
		var bestRank rank
		for i := uint32(0); i < evictionRange && i < n; i++ {
			bi := (b + i) % n
			mu := t.lock(bi)
			for e := t.buckets[bi]; e != nil; e = e.next {
				if r, ok := t.rankOf(e, now); ok && (best == nil || r.beats(bestRank)) {
					best, bestRank = e, r
				}
			}
			mu.Unlock()
		}
		if best == nil {
			return false
		}
		mu := t.lock(best.bucket)
		silent := !best.Heard()
		r, still := t.rankOf(best, now)
		still = still && best.linked
		if still {
			t.unlinkLocked(best)
		}
		mu.Unlock()
		if !still {
			continue // it logged in or went meanwhile
		}
		if r.class == 4 {
			return true // a dying entry's slot: no one else is killed
		}
		t.earlyDrop.Add(1)
		if silent {
			t.earlyDropSilent.Add(1)
		}
		t.drops.record(best.Client.Addr(), silent, now)
		best.Kill(EarlyDrop)
		return true
	}
	return false
}

// silentShard counts silent entries per address (16-byte form).
type silentShard struct {
	sync.Mutex
	m map[[16]byte]int32
	_ [40]byte
}

func (t *Table) silentShardOf(k [16]byte) *silentShard {
	return &t.silent[maphash.Bytes(t.seed, k[:])%numShards]
}

func (t *Table) silentAdd(a netip.Addr, d int32) {
	k := a.Unmap().As16()
	s := t.silentShardOf(k)
	s.Lock()
	if n := s.m[k] + d; n > 0 {
		s.m[k] = n
	} else {
		delete(s.m, k)
	}
	s.Unlock()
}

// silentCount is how many silent entries a holds.
func (t *Table) silentCount(a netip.Addr) int {
	k := a.Unmap().As16()
	s := t.silentShardOf(k)
	s.Lock()
	defer s.Unlock()
	return int(s.m[k])
}

// uncountSilent takes e out of its address's silent count, once: on its
// first byte or when it leaves the table, whichever comes first.
func (t *Table) uncountSilent(e *Entry) {
	if e.silentCounted.CompareAndSwap(true, false) {
		t.silentAdd(e.Client.Addr(), -1)
	}
}

// SilentFrom is how many silent entries (no byte from the client yet) the
// address holds.
func (t *Table) SilentFrom(a netip.Addr) int { return t.silentCount(a) }

// dropLogInterval is the period of the early-drop summary line, as the
// kernel's net_ratelimit counts per 5 s.
const dropLogInterval = 5 * time.Second

// dropLogSources bounds the addresses counted per interval for the top
// list: beyond it, new addresses count in the totals only.
const dropLogSources = 1024

// dropLogTop is how many sources the summary line names.
const dropLogTop = 5

// dropLog accumulates early drops for one summary line per interval.
type dropLog struct {
	mu      sync.Mutex
	begin   int64 // start of the interval (its first drop), unix nanoseconds; 0: no drops yet
	last    int64 // its last drop
	silent  int
	stalled int
	from    map[netip.Addr]int
}

func (d *dropLog) record(a netip.Addr, silent bool, now int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.begin == 0 {
		d.begin = now
	}
	d.last = now
	if silent {
		d.silent++
	} else {
		d.stalled++
	}
	if d.from == nil {
		d.from = make(map[netip.Addr]int)
	}
	a = a.Unmap()
	if _, ok := d.from[a]; ok || len(d.from) < dropLogSources {
		d.from[a]++
	}
}

// flushDropLog writes the summary of an interval that has ended: at the
// first Expire at least dropLogInterval after the interval's first drop,
// so at most one line per interval, and none while nothing is dropped.
func (t *Table) flushDropLog(now int64) {
	d := &t.drops
	d.mu.Lock()
	if d.begin == 0 || now-d.begin < int64(dropLogInterval) {
		d.mu.Unlock()
		return
	}
	silent, stalled, from := d.silent, d.stalled, d.from
	span := time.Duration(d.last - d.begin)
	d.begin, d.last, d.silent, d.stalled, d.from = 0, 0, 0, 0, nil
	d.mu.Unlock()
	t.logFull(dropSummary(silent, stalled, from, span))
}

// spanText says how long an interval's drops took, from its first to its
// last: "at once", "over 48ms", "over 4s" (the line is written after the
// interval, so its own time would say nothing of the flood's).
func spanText(span time.Duration) string {
	switch {
	case span < time.Millisecond:
		return "at once"
	case span < time.Second:
		return "over " + span.Round(time.Millisecond).String()
	}
	return "over " + span.Round(time.Second).String()
}

// dropSummary is the early-drop line, in the shape of the kernel's
// rate-limited lines: counts for the interval, then the top sources in
// courier's address form, most dropped first.
func dropSummary(silent, stalled int, from map[netip.Addr]int, span time.Duration) string {
	type src struct {
		a netip.Addr
		n int
	}
	srcs := make([]src, 0, len(from))
	for a, n := range from {
		srcs = append(srcs, src{a, n})
	}
	slices.SortFunc(srcs, func(x, y src) int {
		if x.n != y.n {
			return y.n - x.n
		}
		return x.a.Compare(y.a)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "conntable: early drop: %d not-logged-in connections dropped %s to make room (%d silent, %d stalled); top sources:",
		silent+stalled, spanText(span), silent, stalled)
	for i, s := range srcs[:min(len(srcs), dropLogTop)] {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s (%d)", courierlog.Addr(s.a), s.n)
	}
	return b.String()
}
