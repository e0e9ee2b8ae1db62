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

// rateTable is a keyed token bucket in GCRA form: one int64 per key, the
// theoretical arrival time (TAT) of the next token. Keys live in a
// set-associative table of fixed size: a key hashes to one set of 4 ways,
// each holding the key's 64-bit hash and its TAT, so a decision is one cache
// line and no allocation, and the garbage collector has nothing to scan.
//
// The bound: size keys (rounded up to a power of two). A new key takes the
// way of its set with the smallest TAT. A TAT in the past is the same as a
// full bucket, so forgetting such a key loses nothing; only when all four
// keys of a set are mid-burst does the oldest start over with a full bucket.
// Two keys share state only if their 64-bit hashes collide (about 2^-64).
type rateTable struct {
	seed maphash.Seed
	mask uint64 // sets-1
	sets []rateSet
	mu   [numShards]struct {
		sync.Mutex
		_ [56]byte
	}
}

type rateSet [ways]struct {
	hash uint64 // 0: empty
	tat  int64
}

func newRateTable(size int) *rateTable {
	n := uint64(1)
	for n*ways < uint64(size) && n < 1<<36 {
		n <<= 1
	}
	return &rateTable{seed: maphash.MakeSeed(), mask: n - 1, sets: make([]rateSet, n)}
}

// allow consumes one token for k at now if the bucket has one.
func (t *rateTable) allow(k key, r Rate, now time.Time) bool {
	interval := int64(r.Per) / int64(r.Burst) // one token per interval
	tolerance := interval * int64(r.Burst-1)  // burst beyond the first
	n := now.UnixNano()
	h := maphash.Bytes(t.seed, k[:])
	si := (h >> 24) & t.mask // the set from high bits; the low bit is forced below
	h |= 1                   // never 0, which marks an empty way
	mu := &t.mu[si%numShards]
	mu.Lock()
	defer mu.Unlock()
	set := &t.sets[si]
	w := -1
	for i := range set {
		if set[i].hash == h {
			w = i
			break
		}
	}
	tat := n
	if w < 0 {
		w = 0
		for i := 1; i < ways; i++ {
			if set[i].tat < set[w].tat {
				w = i
			}
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

// Len is the number of keys remembered.
func (t *rateTable) Len() int {
	n := 0
	for si := range t.sets {
		mu := &t.mu[uint64(si)%numShards]
		mu.Lock()
		for _, w := range t.sets[si] {
			if w.hash != 0 {
				n++
			}
		}
		mu.Unlock()
	}
	return n
}
