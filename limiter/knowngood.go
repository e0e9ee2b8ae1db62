package limiter

import (
	"hash/maphash"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// goodTable remembers who logged in successfully from an address (or, in
// a second table, a prefix): enough to tell a known-good address (KnownGood)
// and whether a user other than a given one logged in from it recently
// (Penalty's shared address).
//
// Like rateTable it is set-associative (4 ways per set) and sharded, and a
// shard grows with use: it doubles when three quarters full or when a new
// key's set is full, up to the bound (size ways, 16 + 80 bytes each). At
// the bound a new key whose set is full takes the way that matters least:
// the one that is not known-good and logged in longest ago. With 4 ways,
// sets start to fill at about a quarter of the bound, so that is the
// number of addresses remembered without loss.
//
// Admit reads only the hot half, a set of 4 (hash, known-good-until) pairs
// in one cache line, without a lock: the words are atomics, and a writer
// that reuses a way clears its hash before changing its time, so a reader
// that sees the same hash before and after reading the time has a time
// that belongs to that hash. Writers (successful logins) take the shard's
// lock and also keep the cold half: the distinct users of the current
// count and the last logins.
type goodTable struct {
	seed   maphash.Seed
	any    atomic.Bool // some key has been known-good: until then lookups are skipped
	shards [numShards]goodShard
}

type goodShard struct {
	sync.Mutex
	tab     atomic.Pointer[goodTab] // replaced whole when the shard grows
	used    int                     // ways holding a key
	maxSets int
	_       [32]byte // keep shards' locks on separate cache lines
}

type goodTab struct {
	sets []goodSet
	info []goodInfo // way w of set s is info[s*ways+w]; under the shard's lock
}

type goodSet [ways]struct {
	hash  atomic.Uint64 // 0: empty
	until atomic.Int64  // known-good until, unix nanoseconds; 0: never was
}

// goodInfo is what writers keep about a key, 80 bytes.
type goodInfo struct {
	since  int64    // start of the current count, unix nanoseconds
	shared int64    // the known-good time last handed to the shared state, or learned from it
	last   [2]int64 // the latest login, and the latest of another user than last[0]'s
	tag    [2]uint32
	users  [MaxKnownGoodUsers]uint32 // the distinct users (tags) who logged in since `since`
	n      uint8                     // users in use
}

func newGoodTable(size int) *goodTable {
	per := uint64(1)
	for per*ways*numShards < uint64(size) && per < 1<<30 {
		per <<= 1
	}
	t := &goodTable{seed: maphash.MakeSeed()}
	for i := range t.shards {
		s := &t.shards[i]
		s.maxSets = int(per)
		n := min(4, int(per))
		s.tab.Store(&goodTab{sets: make([]goodSet, n), info: make([]goodInfo, n*ways)})
	}
	return t
}

// KnownGood reports whether a, or its aggregation prefix, is known-good
// at now: several distinct users logged in from it within the tier's
// window (an office or campus behind NAT). One lock-free lookup each.
func (l *Limiter) KnownGood(a netip.Addr, now time.Time) bool {
	p := l.policy()
	if p.KnownGood.MinUsers <= 0 {
		return false
	}
	a = a.Unmap().WithZone("")
	n := now.UnixNano()
	return l.goodIP.good(addrKey(a), n) || l.goodPrefix.good(prefixKeyOf(p.PrefixOf(a)).addr, n)
}

// userTag names a user in goodInfo by 32 bits of its hash: two users
// share a tag with a chance of one in four billion.
func userTag(uh uint64) uint32 { return uint32(uh >> 32) }

// good reports whether k is known-good at n: one cache line, no lock, no
// allocation.
func (t *goodTable) good(k key, n int64) bool {
	if !t.any.Load() {
		return false
	}
	h := maphash.Bytes(t.seed, k[:])
	tab := t.shards[h%numShards].tab.Load()
	h |= 1
	set := &tab.sets[(h>>24)&uint64(len(tab.sets)-1)]
	for i := range set {
		if set[i].hash.Load() == h {
			until := set[i].until.Load()
			return set[i].hash.Load() == h && n < until
		}
	}
	return false
}

// login records at n a successful login of the user with hash uh from k.
// With the tier on (kg.MinUsers > 0), k becomes or stays known-good until
// n+kg.Window if kg.MinUsers distinct users logged in within the current
// count, which restarts kg.Window after it began.
//
// It returns until, the end of k's known-good time, when k is known-good
// after this login; else 0. share says that until should go to the
// shared state (the other replicas): k just became known-good, or its
// time moved a 24th of the window (an hour by default) past what was
// shared or learned last, so a busy office costs Redis a call an hour,
// not one per login.
func (t *goodTable) login(k key, uh uint64, n int64, kg *KnownGood) (until int64, share bool) {
	s, h := t.lock(k)
	defer s.Unlock()
	tab, i := s.slot(h, n)
	in := &tab.info[i]
	tag := userTag(uh)
	if in.last[0] == 0 || in.tag[0] == tag {
		in.last[0], in.tag[0] = n, tag
	} else {
		in.last[1], in.tag[1] = in.last[0], in.tag[0]
		in.last[0], in.tag[0] = n, tag
	}
	if kg.MinUsers <= 0 {
		return 0, false
	}
	if n-in.since > int64(kg.Window) {
		in.n, in.since = 0, n
	}
	if !slices.Contains(in.users[:in.n], tag) && int(in.n) < len(in.users) {
		in.users[in.n] = tag
		in.n++
	}
	if int(in.n) < kg.MinUsers {
		return 0, false
	}
	w := &tab.sets[i/ways][i%ways]
	until = max(n+int64(kg.Window), w.until.Load()) // a later time learned from another node stays
	w.until.Store(until)
	t.any.Store(true)
	if until-in.shared >= int64(kg.Window)/24 {
		in.shared, share = until, true
	}
	return until, share
}

// learn makes k known-good until `until` (unix nanoseconds) at n, as
// another replica found it; a later time already known stays. The time
// learned counts as shared, so it is not handed back.
func (t *goodTable) learn(k key, until, n int64) {
	s, h := t.lock(k)
	defer s.Unlock()
	tab, i := s.slot(h, n)
	if w := &tab.sets[i/ways][i%ways]; until > w.until.Load() {
		w.until.Store(until)
	}
	in := &tab.info[i]
	in.shared = max(in.shared, until)
	t.any.Store(true)
}

// LearnKnownGood makes k known-good until `until`, as another replica
// found it (package cluster shares the tier through Shared.KnownGood, so
// that a replica that restarted, or that never saw the office's users log
// in, gives it the tier's limits too): k is an address (a /32 or /128) or
// an aggregation prefix of this node's policy ([limits] ipv4_prefix,
// ipv6_prefix); a prefix of another length is ignored, as this node does
// not count by it. Nothing is learned with the tier off or a time past,
// and a time is cut to a window from now.
// A learned address also goes to OnKnownGood's function (the kernel's
// keep set).
func (l *Limiter) LearnKnownGood(k netip.Prefix, until, now time.Time) {
	p := l.policy()
	if p.KnownGood.MinUsers <= 0 || !until.After(now) || !k.IsValid() {
		return
	}
	// No node makes a time past a window from its login: a later one
	// (another node's clock far ahead, or bytes in Redis that are not a
	// node's) is cut to what this node would give.
	if most := now.Add(p.KnownGood.Window); until.After(most) {
		until = most
	}
	a := k.Addr().Unmap().WithZone("")
	switch {
	case k.Bits() == k.Addr().BitLen():
		l.goodIP.learn(addrKey(a), until.UnixNano(), now.UnixNano())
		if f := l.onGood.Load(); f != nil {
			(*f)(a, until)
		}
	case p.PrefixOf(a) == k.Masked():
		l.goodPrefix.learn(prefixKeyOf(k.Masked()).addr, until.UnixNano(), now.UnixNano())
	}
}

// OnKnownGood sets f to be called, in the goroutine of a successful login,
// with the address and the end of its known-good time each time a login
// makes or keeps an address known-good (the kernel's keep set: such an
// address is never dropped, even when its prefix is). f must be quick;
// nil stops the calls.
func (l *Limiter) OnKnownGood(f func(a netip.Addr, until time.Time)) {
	if f == nil {
		l.onGood.Store(nil)
		return
	}
	l.onGood.Store(&f)
}

// shared reports whether, at n, a user other than the one with hash uh
// logged in from k within window, or k is known-good (if tier).
func (t *goodTable) shared(k key, uh uint64, n, window int64, tier bool) bool {
	s, h := t.lock(k)
	defer s.Unlock()
	tab := s.tab.Load()
	i := tab.find(h)
	if i < 0 {
		return false
	}
	if tier && n < tab.sets[i/ways][i%ways].until.Load() {
		return true
	}
	in := &tab.info[i]
	other := in.last[0]
	if in.tag[0] == userTag(uh) {
		other = in.last[1]
	}
	return other != 0 && n-other <= window
}

// lock locks k's shard and returns it with k's hash as the ways hold it
// (never 0, which marks an empty way).
func (t *goodTable) lock(k key) (*goodShard, uint64) {
	h := maphash.Bytes(t.seed, k[:])
	s := &t.shards[h%numShards]
	s.Lock()
	return s, h | 1
}

// slot returns the shard's table and the index of h's way in it, giving
// h a way at n if it has none. The shard grows rather than forget a key
// (at three quarters full, or when h's set is full), up to its bound. The
// shard's lock is held.
func (s *goodShard) slot(h uint64, n int64) (*goodTab, int) {
	tab := s.tab.Load()
	if i := tab.find(h); i >= 0 {
		return tab, i
	}
	for len(tab.sets) < s.maxSets && (s.used >= len(tab.sets)*ways*3/4 || tab.full(h)) {
		tab = s.grow(tab)
	}
	return tab, s.take(tab, h, n)
}

// find returns the index of h's way, or -1.
func (tab *goodTab) find(h uint64) int {
	si := int((h >> 24) & uint64(len(tab.sets)-1))
	set := &tab.sets[si]
	for w := range set {
		if set[w].hash.Load() == h {
			return si*ways + w
		}
	}
	return -1
}

// full reports whether every way of h's set holds a key.
func (tab *goodTab) full(h uint64) bool {
	set := &tab.sets[(h>>24)&uint64(len(tab.sets)-1)]
	for w := range set {
		if set[w].hash.Load() == 0 {
			return false
		}
	}
	return true
}

// take gives h a way of its set: an empty one, else the one whose
// known-good time and last login are oldest. The shard's lock is held.
func (s *goodShard) take(tab *goodTab, h uint64, n int64) int {
	si := int((h >> 24) & uint64(len(tab.sets)-1))
	set := &tab.sets[si]
	best, bestScore := 0, int64(0)
	for w := range set {
		if set[w].hash.Load() == 0 {
			best = w
			s.used++
			break
		}
		score := max(set[w].until.Load(), tab.info[si*ways+w].last[0])
		if w == 0 || score < bestScore {
			best, bestScore = w, score
		}
	}
	way := &set[best]
	way.hash.Store(0) // readers holding the old hash now miss
	way.until.Store(0)
	tab.info[si*ways+best] = goodInfo{since: n}
	way.hash.Store(h)
	return si*ways + best
}

// grow doubles the shard's sets and publishes the new table; readers of
// the old one see what it held. The shard's lock is held.
func (s *goodShard) grow(old *goodTab) *goodTab {
	n := 2 * len(old.sets)
	tab := &goodTab{sets: make([]goodSet, n), info: make([]goodInfo, n*ways)}
	mask := uint64(n - 1)
	for si := range old.sets {
		for w := range old.sets[si] {
			h := old.sets[si][w].hash.Load()
			if h == 0 {
				continue
			}
			di := int((h >> 24) & mask)
			for dw := range tab.sets[di] {
				if tab.sets[di][dw].hash.Load() == 0 {
					tab.sets[di][dw].until.Store(old.sets[si][w].until.Load())
					tab.sets[di][dw].hash.Store(h)
					tab.info[di*ways+dw] = old.info[si*ways+w]
					break
				}
			}
		}
	}
	s.tab.Store(tab)
	return tab
}

// Len is the number of keys remembered.
func (t *goodTable) Len() int {
	n := 0
	for i := range t.shards {
		t.shards[i].Lock()
		n += t.shards[i].used
		t.shards[i].Unlock()
	}
	return n
}

// KnownGoodInfo is what the known-good tier knows of an address and of
// its aggregation prefix, for an admin's question (ctl knowngood).
type KnownGoodInfo struct {
	Prefix                 netip.Prefix // the address's aggregation prefix
	AddrUntil, PrefixUntil time.Time    // end of the known-good time; zero: not known-good
	// AddrUsers and PrefixUsers are the distinct users counted in the
	// current window (the tier needs MinUsers); a user's logins count once.
	AddrUsers, PrefixUsers int
	MinUsers               int // the policy's; 0: the tier is off
}

// KnownGoodOf reports what the tier knows of a at now: the tier's times
// whether learned here or from another replica (LearnKnownGood), and the
// users counted here. One locked lookup per table.
func (l *Limiter) KnownGoodOf(a netip.Addr, now time.Time) KnownGoodInfo {
	p := l.policy()
	a = a.Unmap().WithZone("")
	info := KnownGoodInfo{Prefix: p.PrefixOf(a), MinUsers: p.KnownGood.MinUsers}
	n := now.UnixNano()
	until, users := l.goodIP.of(addrKey(a), n, int64(p.KnownGood.Window))
	if until > n {
		info.AddrUntil = time.Unix(0, until)
	}
	info.AddrUsers = users
	until, users = l.goodPrefix.of(prefixKeyOf(info.Prefix).addr, n, int64(p.KnownGood.Window))
	if until > n {
		info.PrefixUntil = time.Unix(0, until)
	}
	info.PrefixUsers = users
	return info
}

// KnownGoodCount counts the addresses and prefixes known-good at now,
// none with the tier off (a scan of both tables, shard by shard: for
// status, not a hot path).
func (l *Limiter) KnownGoodCount(now time.Time) (addrs, prefixes int) {
	if l.policy().KnownGood.MinUsers <= 0 {
		return 0, 0 // the tier is off: nothing gets its limits
	}
	n := now.UnixNano()
	return l.goodIP.count(n), l.goodPrefix.count(n)
}

// of returns k's known-good end and the users counted in its window at
// n (none once the window that began the count is over).
func (t *goodTable) of(k key, n, window int64) (until int64, users int) {
	s, h := t.lock(k)
	defer s.Unlock()
	tab := s.tab.Load()
	i := tab.find(h)
	if i < 0 {
		return 0, 0
	}
	in := &tab.info[i]
	if n-in.since <= window {
		users = int(in.n)
	}
	return tab.sets[i/ways][i%ways].until.Load(), users
}

// count returns how many keys are known-good at n.
func (t *goodTable) count(n int64) int {
	c := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.Lock()
		tab := s.tab.Load()
		for si := range tab.sets {
			for w := range tab.sets[si] {
				if tab.sets[si][w].hash.Load() != 0 && tab.sets[si][w].until.Load() > n {
					c++
				}
			}
		}
		s.Unlock()
	}
	return c
}
