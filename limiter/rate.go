package limiter

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// key is an address or a masked prefix address in 16-byte form. Prefix
// lengths are fixed per family by the policy, so the masked address alone
// names a prefix.
type key [16]byte

func addrKey(a netip.Addr) key { return a.As16() }

// rateTable is a keyed GCRA limiter (the token bucket in one int64 per key:
// the theoretical arrival time) in LRU-bounded shards. Forgetting a key is
// harmless: it starts again with a full bucket.
type rateTable struct {
	seed   maphash.Seed
	shards [numShards]struct {
		sync.Mutex
		lru *simplelru.LRU[key, int64]
	}
}

func newRateTable(size int) *rateTable {
	t := &rateTable{seed: maphash.MakeSeed()}
	per := max(size/numShards, 1)
	for i := range t.shards {
		t.shards[i].lru, _ = simplelru.NewLRU[key, int64](per, nil)
	}
	return t
}

// allow consumes one token for k at now if the bucket has one.
func (t *rateTable) allow(k key, r Rate, now time.Time) bool {
	interval := int64(r.Per) / int64(r.Burst) // one token per interval
	tolerance := interval * int64(r.Burst-1)  // burst beyond the first
	n := now.UnixNano()
	s := &t.shards[maphash.Bytes(t.seed, k[:])%numShards]
	s.Lock()
	defer s.Unlock()
	tat, ok := s.lru.Get(k)
	if !ok || tat < n {
		tat = n
	}
	if tat-n > tolerance {
		return false
	}
	s.lru.Add(k, tat+interval)
	return true
}

// Len is the number of keys remembered.
func (t *rateTable) Len() int {
	n := 0
	for i := range t.shards {
		t.shards[i].Lock()
		n += t.shards[i].lru.Len()
		t.shards[i].Unlock()
	}
	return n
}
