package limiter

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

type failRecord struct {
	count       int
	windowStart int64
}

// failTable remembers failed logins per address and per prefix (LRU
// bounded), and the bans they caused (a plain map: bans are few and every
// Admit consults them).
type failTable struct {
	nbans atomic.Int32 // len(bans), read without the lock on every Admit
	mu    sync.Mutex
	lru   *simplelru.LRU[netip.Prefix, failRecord]
	bans  map[netip.Prefix]int64 // key -> banned until, unix nanoseconds
}

func newFailTable(size int) *failTable {
	lru, _ := simplelru.NewLRU[netip.Prefix, failRecord](size, nil)
	return &failTable{lru: lru, bans: make(map[netip.Prefix]int64)}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func (f *failTable) banned(a netip.Addr, prefix netip.Prefix, now time.Time) bool {
	if f.nbans.Load() == 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.nbans.Store(int32(len(f.bans)))
	n := now.UnixNano()
	for _, k := range [2]netip.Prefix{hostPrefix(a), prefix} {
		if until, ok := f.bans[k]; ok {
			if n < until {
				return true
			}
			delete(f.bans, k)
		}
	}
	return false
}

// Ban describes a ban that a failed login started.
type Ban struct {
	Key      netip.Prefix // an address (/32, /128) or a prefix
	Until    time.Time
	Failures int
}

// LoginFailed records a failed login from the ticket's address. It returns
// how long to hold the NO answer, and a ban if this failure started one.
// The account is never locked: only the source is penalised.
func (t *Ticket) LoginFailed(now time.Time) (delay time.Duration, ban *Ban) {
	if t.l == nil || t.exempt {
		return 0, nil
	}
	pen := t.l.policy.Load().Penalty
	if pen.Failures <= 0 && pen.PrefixFailures <= 0 {
		return 0, nil
	}
	f := t.l.fails
	n := now.UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	bump := func(k netip.Prefix, limit int) int {
		r, _ := f.lru.Get(k)
		if n-r.windowStart > int64(pen.Window) {
			r = failRecord{windowStart: n}
		}
		r.count++
		f.lru.Add(k, r)
		if limit > 0 && r.count >= limit && ban == nil {
			until := n + int64(pen.BanTime)
			if cur, ok := f.bans[k]; !ok || cur < n {
				f.bans[k] = until
				f.nbans.Store(int32(len(f.bans)))
				ban = &Ban{Key: k, Until: time.Unix(0, until), Failures: r.count}
			}
		}
		return r.count
	}
	count := bump(hostPrefix(t.addr), pen.Failures)
	if pen.PrefixFailures > 0 {
		bump(t.prefix, pen.PrefixFailures)
	}
	if pen.Delay > 0 && count > 1 {
		delay = min(time.Duration(count-1)*pen.Delay, pen.MaxDelay)
	}
	return delay, ban
}

// Bans lists the bans in force at now, soonest to expire first.
func (l *Limiter) Bans(now time.Time) []Ban {
	f := l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Ban
	for k, until := range f.bans {
		if until > now.UnixNano() {
			out = append(out, Ban{Key: k, Until: time.Unix(0, until)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// Unban lifts the ban on an address or prefix and forgets its failures. It
// reports whether there was a ban.
func (l *Limiter) Unban(k netip.Prefix) bool {
	k = unmapPrefix(k)
	f := l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.bans[k]
	delete(f.bans, k)
	f.nbans.Store(int32(len(f.bans)))
	f.lru.Remove(k)
	return ok
}
