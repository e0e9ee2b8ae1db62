package limiter

import "sync"

// overTable remembers refusals by shared limits: set-associative like
// rateTable, bounded, one mutex per shard.
type overTable struct {
	shards [numShards]overShard
}

type overKind uint8

const (
	overAll overKind = iota + 1
	overPrefix
	overAddr
)

type overKey struct {
	kind overKind
	bits uint8
	k    key
}

type overShard struct {
	sync.Mutex
	sets [][ways]overWay
}

type overWay struct {
	key    overKey
	until  int64
	reason Reason
	limit  int32
}

func newOverTable(size int) *overTable {
	t := &overTable{}
	per := max(size/numShards/ways, 1)
	for i := range t.shards {
		t.shards[i].sets = make([][ways]overWay, per)
	}
	return t
}

func (t *overTable) locate(k overKey) (*overShard, int) {
	h := uint64(k.kind)*0x9e3779b97f4a7c15 ^ uint64(k.bits)
	for _, b := range k.k {
		h = (h ^ uint64(b)) * 0x100000001b3
	}
	s := &t.shards[h%numShards]
	return s, int((h >> 8) % uint64(len(s.sets)))
}

func (t *overTable) get(k overKey, n int64) (Reason, int, bool) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	for w := range s.sets[i] {
		if way := &s.sets[i][w]; way.key == k && way.until > n {
			return way.reason, int(way.limit), true
		}
	}
	return 0, 0, false
}

func (t *overTable) put(k overKey, until int64, r Reason, limit int) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	set := &s.sets[i]
	w := 0
	for j := range set {
		if set[j].key == k {
			w = j
			break
		}
		if set[j].until < set[w].until {
			w = j
		}
	}
	set[w] = overWay{key: k, until: until, reason: r, limit: int32(limit)}
}

// forget drops k: a connection counted under it ended on this node, so a
// place may be free again.
func (t *overTable) forget(k overKey) {
	s, i := t.locate(k)
	s.Lock()
	defer s.Unlock()
	for w := range s.sets[i] {
		if s.sets[i][w].key == k {
			s.sets[i][w] = overWay{}
		}
	}
}
