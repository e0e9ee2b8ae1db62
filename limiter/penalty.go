package limiter

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// failKey names a failure record: an address or a prefix (user 0), or a
// user on an address. It holds no pointers.
type failKey struct {
	addr key
	bits uint8
	user uint64 // the user's hash; 0 for an address or prefix
}

func prefixFailKey(p netip.Prefix) failKey {
	return failKey{addr: addrKey(p.Addr()), bits: uint8(p.Bits())}
}

func userFailKey(a netip.Addr, uh uint64) failKey {
	return failKey{addr: addrKey(a), bits: uint8(a.BitLen()), user: uh}
}

// recentSlots is how many attempt keys a user's record, or distinct users
// an address's or prefix's record, remembers.
const recentSlots = 8

// failRecord counts the failures of one key within a window.
type failRecord struct {
	start  int64 // window start, unix nanoseconds
	count  int32 // failures counted in the window
	n      uint8 // slots of recent in use
	next   uint8 // the slot the next attempt key overwrites once all are used
	recent [recentSlots]uint32
}

// seenAttempt reports whether the attempt key a is one of the record's
// recent ones, and remembers it if not (oldest forgotten first).
func (r *failRecord) seenAttempt(a uint64) bool {
	if r.hasAttempt(a) {
		return true
	}
	v := uint32(a)
	if r.n < recentSlots {
		r.recent[r.n] = v
		r.n++
		return false
	}
	r.recent[r.next] = v
	r.next = (r.next + 1) % recentSlots
	return false
}

// hasAttempt reports whether a is one of the record's recent attempt keys,
// without remembering it.
func (r *failRecord) hasAttempt(a uint64) bool {
	v := uint32(a)
	for _, x := range r.recent[:r.n] {
		if x == v {
			return true
		}
	}
	return false
}

// addUser remembers a failing user's hash (up to recentSlots users) and
// returns how many distinct users failed.
func (r *failRecord) addUser(uh uint64) int {
	v := uint32(uh)
	for _, x := range r.recent[:r.n] {
		if x == v {
			return int(r.n)
		}
	}
	if r.n < recentSlots {
		r.recent[r.n] = v
		r.n++
	}
	return int(r.n)
}

// failTable remembers failed logins per user and address, per address and
// per prefix (LRU bounded), and the bans they caused: address and prefix
// bans in one map, which every Admit consults, user+address bans in
// another, which logins consult. Each map is bounded by maxBans.
type failTable struct {
	nbans     atomic.Int32 // len(bans), read without the lock on every Admit
	nuserBans atomic.Int32 // len(userBans)
	mu        sync.Mutex
	lru       *simplelru.LRU[failKey, failRecord]
	bans      map[netip.Prefix]int64 // key -> banned until, unix nanoseconds
	userBans  map[failKey]userBan
	maxBans   int
}

type userBan struct {
	until int64
	addr  netip.Addr
	user  string
}

func newFailTable(size, maxBans int) *failTable {
	lru, _ := simplelru.NewLRU[failKey, failRecord](size, nil)
	return &failTable{lru: lru, bans: make(map[netip.Prefix]int64), userBans: make(map[failKey]userBan), maxBans: maxBans}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// banned reports whether a is banned at now: an address ban, or a ban of
// its aggregation prefix unless spareNetwork (a is known-good: a network
// ban does not refuse the office inside it, as the kernel's keep set
// lets it past a network drop).
func (f *failTable) banned(a netip.Addr, prefix netip.Prefix, now time.Time, spareNetwork bool) bool {
	if f.nbans.Load() == 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.nbans.Store(int32(len(f.bans)))
	n := now.UnixNano()
	keys := []netip.Prefix{hostPrefix(a), prefix}
	if spareNetwork {
		keys = keys[:1]
	}
	for _, k := range keys {
		if until, ok := f.bans[k]; ok {
			if n < until {
				return true
			}
			delete(f.bans, k)
		}
	}
	return false
}

// record returns k's record at n, restarted if its window has passed. The
// lock is held.
func (f *failTable) record(k failKey, n int64, window time.Duration) failRecord {
	r, ok := f.lru.Get(k)
	if !ok || n-r.start > int64(window) {
		r = failRecord{start: n}
	}
	return r
}

// Ban describes a ban that failed logins started, or one in force.
type Ban struct {
	Key netip.Prefix // an address (/32, /128) or a prefix
	// User is set for a user+address ban: only this user's logins from Key
	// are refused (Ticket.UserBanned). It is empty for an address or prefix
	// ban, which refuses every new connection from Key.
	User  string
	Until time.Time
	// Failures counted when the ban started (0 in Limiter.Bans).
	Failures int
	// Narrowed: the address's failures spanned enough users for an address
	// ban, but other users log in from it, so only User is banned.
	Narrowed bool
}

// banKey bans an address or prefix until n+banTime unless a ban on it is
// already in force. The lock is held.
func (f *failTable) banKey(k netip.Prefix, n int64, banTime time.Duration, failures int) *Ban {
	if until, ok := f.bans[k]; ok && n < until {
		return nil
	}
	makeRoom(f.bans, f.maxBans, n, func(until int64) int64 { return until })
	until := n + int64(banTime)
	f.bans[k] = until
	f.nbans.Store(int32(len(f.bans)))
	return &Ban{Key: k, Until: time.Unix(0, until), Failures: failures}
}

// banUser bans user (hash uh) on a unless such a ban is in force. The lock
// is held.
func (f *failTable) banUser(a netip.Addr, user string, uh uint64, n int64, banTime time.Duration, failures int) *Ban {
	k := userFailKey(a, uh)
	if b, ok := f.userBans[k]; ok && n < b.until {
		return nil
	}
	makeRoom(f.userBans, f.maxBans, n, func(b userBan) int64 { return b.until })
	until := n + int64(banTime)
	f.userBans[k] = userBan{until: until, addr: a, user: user}
	f.nuserBans.Store(int32(len(f.userBans)))
	return &Ban{Key: hostPrefix(a), User: user, Until: time.Unix(0, until), Failures: failures}
}

// makeRoom keeps m below limit entries before an insertion: it drops
// expired entries, then, if none had expired, the one that expires soonest.
// The scan runs only when limit bans are in force.
func makeRoom[K comparable, V any](m map[K]V, limit int, n int64, until func(V) int64) {
	if len(m) < limit {
		return
	}
	var soonest K
	first := int64(-1)
	for k, v := range m {
		u := until(v)
		if u <= n {
			delete(m, k)
			continue
		}
		if first < 0 || u < first {
			soonest, first = k, u
		}
	}
	if len(m) >= limit && first >= 0 {
		delete(m, soonest)
	}
}

// userBanned reports whether the user with hash uh is banned on a at n.
func (f *failTable) userBanned(a netip.Addr, uh uint64, n int64) bool {
	if f.nuserBans.Load() == 0 {
		return false
	}
	k := userFailKey(a, uh)
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.userBans[k]
	if !ok {
		return false
	}
	if n < b.until {
		return true
	}
	delete(f.userBans, k)
	f.nuserBans.Store(int32(len(f.userBans)))
	return false
}

// Bans lists the bans in force at now, address, prefix and user+address
// bans alike, soonest to expire first.
func (l *Limiter) Bans(now time.Time) []Ban {
	f := l.fails
	n := now.UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Ban
	for k, until := range f.bans {
		if until > n {
			out = append(out, Ban{Key: k, Until: time.Unix(0, until)})
		}
	}
	for _, b := range f.userBans {
		if b.until > n {
			out = append(out, Ban{Key: hostPrefix(b.addr), User: b.user, Until: time.Unix(0, b.until)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// Unban lifts the ban on an address or prefix, and the user+address bans on
// the addresses it contains, and forgets their failures. It reports whether
// there was a ban.
func (l *Limiter) Unban(k netip.Prefix) bool {
	ok, lifted := l.unban(k)
	l.sharedUnban(Ban{Key: unmapPrefix(k)}, lifted, func(s Shared) error {
		ctx, cancel := l.ctx()
		defer cancel()
		return s.Unban(ctx, unmapPrefix(k))
	})
	return ok
}

// unban lifts the ban on k and the user bans inside it on this node, and
// returns whether there was one and the bans it lifted (with their
// Until), which an unban made while the shared state is down records.
func (l *Limiter) unban(k netip.Prefix) (ok bool, lifted []Ban) {
	k = unmapPrefix(k)
	f := l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	if until, found := f.bans[k]; found {
		ok = true
		lifted = append(lifted, Ban{Key: k, Until: time.Unix(0, until)})
	}
	delete(f.bans, k)
	f.nbans.Store(int32(len(f.bans)))
	f.lru.Remove(prefixFailKey(k))
	for uk, b := range f.userBans {
		if k.Contains(b.addr) {
			lifted = append(lifted, Ban{Key: hostPrefix(b.addr), User: b.user, Until: time.Unix(0, b.until)})
			delete(f.userBans, uk)
			f.lru.Remove(uk)
			ok = true
		}
	}
	f.nuserBans.Store(int32(len(f.userBans)))
	return ok, lifted
}

// UnbanUser lifts the ban of user on addr and forgets the user's failures
// there. It reports whether there was a ban.
func (l *Limiter) UnbanUser(addr netip.Addr, user string) bool {
	ok, lifted := l.unbanUser(addr, user)
	a := addr.Unmap().WithZone("")
	l.sharedUnban(Ban{Key: netip.PrefixFrom(a, a.BitLen()), User: user}, lifted, func(s Shared) error {
		ctx, cancel := l.ctx()
		defer cancel()
		return s.UnbanUser(ctx, addr.Unmap().WithZone(""), user)
	})
	return ok
}

// unbanUser lifts the ban of user on addr on this node, and returns
// whether there was one and the ban it lifted.
func (l *Limiter) unbanUser(addr netip.Addr, user string) (bool, []Ban) {
	k := userFailKey(addr.Unmap().WithZone(""), l.userHash(user))
	f := l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.userBans[k]
	delete(f.userBans, k)
	f.nuserBans.Store(int32(len(f.userBans)))
	f.lru.Remove(k)
	if !ok {
		return false, nil
	}
	return true, []Ban{{Key: hostPrefix(b.addr), User: b.user, Until: time.Unix(0, b.until)}}
}
