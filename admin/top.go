package admin

import (
	"net/netip"
	"sort"
	"sync"
)

// Top tracks which addresses were refused or failed to log in most, with
// bounded memory: the space-saving algorithm keeps at most capacity
// addresses, replacing the least counted one (and inheriting its count as
// the newcomer's possible overestimate) when full.
type Top struct {
	refused, failed *spaceSaving
}

// NewTop tracks at most capacity addresses per list.
func NewTop(capacity int) *Top {
	return &Top{refused: newSpaceSaving(capacity), failed: newSpaceSaving(capacity)}
}

// Count is one address and its count.
type Count struct {
	Addr  string `json:"addr"`
	Count uint64 `json:"count"`
}

type spaceSaving struct {
	mu     sync.Mutex
	cap    int
	counts map[netip.Addr]uint64
}

func newSpaceSaving(capacity int) *spaceSaving {
	return &spaceSaving{cap: capacity, counts: make(map[netip.Addr]uint64)}
}

func (s *spaceSaving) add(a netip.Addr) {
	a = a.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.counts[a]; ok || len(s.counts) < s.cap {
		s.counts[a]++
		return
	}
	var minA netip.Addr
	minC := ^uint64(0)
	for k, c := range s.counts { // O(capacity) only when full and new
		if c < minC {
			minA, minC = k, c
		}
	}
	delete(s.counts, minA)
	s.counts[a] = minC + 1
}

func (s *spaceSaving) top(n int) []Count {
	s.mu.Lock()
	out := make([]Count, 0, len(s.counts))
	for a, c := range s.counts {
		out = append(out, Count{a.String(), c})
	}
	s.mu.Unlock()
	return topN(out, n)
}

func topN(cs []Count, n int) []Count {
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].Count != cs[j].Count {
			return cs[i].Count > cs[j].Count
		}
		return cs[i].Addr < cs[j].Addr
	})
	if n > 0 && len(cs) > n {
		cs = cs[:n]
	}
	return cs
}
