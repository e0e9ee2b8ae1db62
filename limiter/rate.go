package limiter

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// key is an address or a masked prefix address in 16-byte form.
type key [16]byte

func addrKey(a netip.Addr) key { return a.As16() }

// ways per set: 4 ways of 16 bytes fill one 64-byte cache line.
const ways = 4

// minSets is where each shard starts: memory grows with the addresses
// actually seen, not with the configured bound.
const minSets = 16

// rateTable is a keyed token bucket in GCRA form: one int64 per key, the
// theoretical arrival time (TAT) of the next token. Keys live in
// set-associative shards: a key hashes to a shard and to one set of 4 ways
// in it, each way holding the key's 64-bit hash and its TAT, so a decision
// is one cache line and no allocation, and the garbage collector has
// nothing to scan. A shard doubles its sets when three quarters of its ways
// are used, up to the table's bound, dropping expired buckets as it
// rehashes.
//
// The bound: size keys (rounded up to a power of two). When a set is full a
// new key takes the way with the smallest TAT. A TAT in the past is the same
// as a full bucket, so forgetting such a key loses nothing; only when all
// four keys of a set are mid-burst does the oldest start over with a full
// bucket. Two keys share state only if their 64-bit hashes collide.
type rateTable struct {
	seed   maphash.Seed
	shards [numShards]rateShard
}

type rateShard struct {
	sync.Mutex
	sets    []rateSet
	used    int // ways holding a key
	maxSets int
	_       [24]byte // keep shards' locks on separate cache lines
}

type rateSet [ways]struct {
	hash uint64 // 0: empty
	tat  int64
}

func newRateTable(size int) *rateTable {
	per := uint64(1)
	for per*ways*numShards < uint64(size) && per < 1<<30 {
		per <<= 1
	}
	t := &rateTable{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].maxSets = int(per)
		t.shards[i].sets = make([]rateSet, min(minSets, int(per)))
	}
	return t
}

// allow consumes one token for k at now if the bucket has one.
func (t *rateTable) allow(k key, r Rate, now time.Time) bool {
	interval := r.interval()                 // one token per interval
	tolerance := interval * int64(r.Burst-1) // burst beyond the first
	n := now.UnixNano()
	h := maphash.Bytes(t.seed, k[:])
	s := &t.shards[h%numShards]
	h |= 1 // never 0, which marks an empty way
	s.Lock()
	defer s.Unlock()
	set := &s.sets[(h>>24)&uint64(len(s.sets)-1)]
	w := -1
	for i := range set {
		if set[i].hash == h {
			w = i
			break
		}
	}
	tat := n
	if w < 0 {
		if s.used >= len(s.sets)*ways*3/4 && len(s.sets) < s.maxSets {
			s.grow(n)
			set = &s.sets[(h>>24)&uint64(len(s.sets)-1)]
		}
		w = 0
		for i := 1; i < ways; i++ {
			if set[i].tat < set[w].tat {
				w = i
			}
		}
		if set[w].hash == 0 {
			s.used++
		}
		set[w].hash = h
	} else if set[w].tat > n {
		tat = set[w].tat
	}
	if tat-n > tolerance {
		return false
	}
	set[w].tat = tat + interval
	return true
}

// refund gives back a token worth interval that k spent, unless k has been
// forgotten since or its bucket is full again.
func (t *rateTable) refund(k key, interval int64, now time.Time) {
	n := now.UnixNano()
	h := maphash.Bytes(t.seed, k[:])
	s := &t.shards[h%numShards]
	h |= 1
	s.Lock()
	set := &s.sets[(h>>24)&uint64(len(s.sets)-1)]
	for i := range set {
		if set[i].hash == h {
			if set[i].tat > n {
				set[i].tat = max(set[i].tat-interval, n)
			}
			break
		}
	}
	s.Unlock()
}

// grow doubles the shard's sets, dropping buckets that are full again.
func (s *rateShard) grow(now int64) {
	old := s.sets
	s.sets = make([]rateSet, 2*len(old))
	s.used = 0
	mask := uint64(len(s.sets) - 1)
	for _, set := range old {
		for _, w := range set {
			if w.hash == 0 || w.tat <= now {
				continue
			}
			dst := &s.sets[(w.hash>>24)&mask]
			for i := range dst {
				if dst[i].hash == 0 {
					dst[i] = w
					s.used++
					break
				}
			}
		}
	}
}

// Len is the number of keys remembered.
func (t *rateTable) Len() int {
	n := 0
	for i := range t.shards {
		t.shards[i].Lock()
		n += t.shards[i].used
		t.shards[i].Unlock()
	}
	return n
}
