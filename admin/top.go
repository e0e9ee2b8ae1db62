package admin

import (
	"net/netip"
	"sort"
	"sync"
)

// Top tracks which addresses were refused or failed to log in most, with
// bounded memory: the space-saving algorithm keeps at most capacity
// addresses, replacing the least counted one (and inheriting its count as
// the newcomer's possible overestimate) when full. Every refusal passes
// through here, so a flood from many addresses must not cost a scan each:
// one scan collects all addresses at the minimum count, and newcomers
// replace them one by one (amortised O(1)).
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
	mu      sync.Mutex
	cap     int
	counts  map[netip.Addr]uint64
	victims []netip.Addr // addresses last seen at count min, for replacement
	min     uint64
	// A run of adds from one address (a flood's) is counted here and
	// enters counts when another address comes or the list is read: in
	// a one-address flood the map was a third of the refusal's own code.
	last netip.Addr
	run  uint64
}

func newSpaceSaving(capacity int) *spaceSaving {
	return &spaceSaving{cap: capacity, counts: make(map[netip.Addr]uint64)}
}

func (s *spaceSaving) add(a netip.Addr) {
	a = a.Unmap()
	s.mu.Lock()
	if s.run > 0 && a == s.last {
		s.run++
		s.mu.Unlock()
		return
	}
	s.flush()
	s.last, s.run = a, 1
	s.mu.Unlock()
}

// flush counts the run of adds from s.last.
func (s *spaceSaving) flush() {
	a, n := s.last, s.run
	if n == 0 {
		return
	}
	s.run = 0
	if _, ok := s.counts[a]; ok || len(s.counts) < s.cap {
		s.counts[a] += n
		return
	}
	victim, ok := s.popVictim()
	if !ok {
		s.collectVictims()
		victim, _ = s.popVictim()
	}
	delete(s.counts, victim)
	s.counts[a] = s.min + n
}

// popVictim returns a collected address still at the minimum count.
func (s *spaceSaving) popVictim() (netip.Addr, bool) {
	for len(s.victims) > 0 {
		v := s.victims[len(s.victims)-1]
		s.victims = s.victims[:len(s.victims)-1]
		if c, ok := s.counts[v]; ok && c == s.min {
			return v, true
		}
	}
	return netip.Addr{}, false
}

// collectVictims finds the minimum count and every address at it.
func (s *spaceSaving) collectVictims() {
	s.min = ^uint64(0)
	for _, c := range s.counts {
		s.min = min(s.min, c)
	}
	s.victims = s.victims[:0]
	for a, c := range s.counts {
		if c == s.min {
			s.victims = append(s.victims, a)
		}
	}
}

func (s *spaceSaving) top(n int) []Count {
	s.mu.Lock()
	s.flush()
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
