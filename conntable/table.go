package conntable

import (
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/internal/throttle"
	"imapgate/internal/tick"
)

// Config sizes the table and sets the state timeouts.
type Config struct {
	// Max is the hard maximum of entries (nf_conntrack_max). Required.
	Max int
	// Buckets is the number of hash buckets (hashsize); 0 means Max/4
	// (at least 1). Fixed for the life of the table.
	Buckets int
	// Timeouts per state. Handshake and Preauth count from entering the
	// state (a hard limit: trickling bytes does not extend it, as courier's
	// 60 s pre-login alarm); Established and Closing count from the last
	// byte in either direction. Zero means DefaultTimeouts' value.
	Timeouts [numStates]time.Duration
	// Silent is the timeout of a Handshake entry that has received no byte
	// from the client, counted like Handshake's (conntrack's short timeout
	// for a flow that has seen no reply). Zero means DefaultSilent; a value
	// above Timeouts[Handshake] has no effect.
	Silent time.Duration
}

// DefaultSilent: an honest client sends its ClientHello right behind the
// TCP handshake's last ACK; 5 s leave room for two retransmissions of a
// lost one, and free a silent flood's slots twice as fast as the
// handshake timeout.
const DefaultSilent = 5 * time.Second

// DefaultTimeouts: handshake 10 s (courier has none: a silent TCP client
// holds a slot forever); preauth 60 s (courier's imaplogin alarm); established
// 30 min of inactivity (courier's autologout; RFC 2177 clients re-issue IDLE
// every 29 min, and re-issuing is traffic); closing 10 s.
var DefaultTimeouts = [numStates]time.Duration{
	Handshake:   10 * time.Second,
	Preauth:     60 * time.Second,
	Established: 30 * time.Minute,
	Closing:     10 * time.Second,
}

// evictionRange is how many consecutive buckets an insert into a full
// table searches for a victim (the kernel's NF_CT_EVICTION_RANGE).
const evictionRange = 8

// nearFullPercent is the fill at which closing entries are reaped early,
// as conntrack's GC does at 95 %.
const nearFullPercent = 95

// shards: bucket i is guarded by shards[i%numShards]. A power of two well
// above the core count keeps two cores from meeting on one lock.
const numShards = 64

// ErrFull is returned by Insert when the table is full and no unassured
// entry could be dropped.
var ErrFull = errors.New("conntable: table full")

// Stats are conntrack -S's counters.
type Stats struct {
	Found        uint64 `json:"found"`
	Insert       uint64 `json:"insert"`
	InsertFailed uint64 `json:"insert_failed"`
	Drop         uint64 `json:"drop"`
	EarlyDrop    uint64 `json:"early_drop"`
	Reaped       uint64 `json:"reaped"`
	Timeout      uint64 `json:"timeout"`
	// EarlyDropSilent counts the early drops that took a silent entry;
	// SilentTimeout the timeouts of silent entries (both also in the
	// totals above).
	EarlyDropSilent uint64 `json:"early_drop_silent"`
	SilentTimeout   uint64 `json:"silent_timeout"`
	RxBytes         uint64 `json:"rx_bytes"` // from clients, live and closed sessions
	TxBytes         uint64 `json:"tx_bytes"` // to clients
}

// Table is the connection table. All methods are safe for concurrent use.
type Table struct {
	own     atomic.Pointer[Config] // New's and Reconfigure's
	cfg     func() *Config         // own.Load, or what Follow gave
	buckets []*Entry               // chain heads
	shards  [numShards]struct {
		sync.Mutex
		_ [56]byte // keep shards on separate cache lines
	}
	seed  maphash.Seed
	count atomic.Int64
	seq   atomic.Uint64
	clock atomic.Int64 // coarse now, unix nanoseconds, advanced by Expire

	found, insert, insertFailed, drop, earlyDrop, reaped, timeout atomic.Uint64
	earlyDropSilent, silentTimeout                                atomic.Uint64
	rx, tx                                                        atomic.Uint64 // bytes from/to clients, all entries ever

	// silent counts, per address, the entries that have heard nothing
	// (drop.go ranks early-drop victims by it).
	silent [numShards]silentShard

	full    *throttle.Throttle
	logFull func(msg string)
	drops   dropLog
}

// New builds a table. logf receives the rate-limited "table full" lines;
// nil discards them.
func New(cfg Config, logf func(msg string)) (*Table, error) {
	c, err := cfg.normalise()
	if err != nil {
		return nil, err
	}
	if logf == nil {
		logf = func(string) {}
	}
	t := &Table{
		buckets: make([]*Entry, c.Buckets),
		seed:    maphash.MakeSeed(),
		full:    throttle.New(5*time.Second, 10),
		logFull: logf,
	}
	for i := range t.silent {
		t.silent[i].m = make(map[[16]byte]int32)
	}
	t.own.Store(c)
	t.cfg = t.own.Load
	t.clock.Store(time.Now().UnixNano())
	return t, nil
}

func (cfg Config) normalise() (*Config, error) {
	if cfg.Max <= 0 {
		return nil, fmt.Errorf("conntable: max must be positive, got %d", cfg.Max)
	}
	if cfg.Buckets == 0 {
		cfg.Buckets = max(cfg.Max/4, 1)
	}
	if cfg.Buckets < 0 || cfg.Buckets > 1<<24 {
		return nil, fmt.Errorf("conntable: buckets must be in 1..%d, got %d", 1<<24, cfg.Buckets)
	}
	for s, d := range cfg.Timeouts {
		if d < 0 {
			return nil, fmt.Errorf("conntable: %s timeout is negative", State(s))
		}
		if d == 0 {
			cfg.Timeouts[s] = DefaultTimeouts[s]
		}
	}
	if cfg.Silent < 0 {
		return nil, fmt.Errorf("conntable: silent timeout is negative")
	}
	if cfg.Silent == 0 {
		cfg.Silent = DefaultSilent
	}
	return &cfg, nil
}

// Count is the number of live entries (nf_conntrack_count).
func (t *Table) Count() int { return int(t.count.Load()) }

// Max is the configured maximum (nf_conntrack_max).
func (t *Table) Max() int { return t.cfg().Max }

// Stats returns the counters.
func (t *Table) Stats() Stats {
	return Stats{
		Found: t.found.Load(), Insert: t.insert.Load(), InsertFailed: t.insertFailed.Load(),
		Drop: t.drop.Load(), EarlyDrop: t.earlyDrop.Load(), Reaped: t.reaped.Load(), Timeout: t.timeout.Load(),
		EarlyDropSilent: t.earlyDropSilent.Load(), SilentTimeout: t.silentTimeout.Load(),
		RxBytes: t.rx.Load(), TxBytes: t.tx.Load(),
	}
}

func (t *Table) bucketOf(client, local netip.AddrPort) uint32 {
	var h maphash.Hash
	h.SetSeed(t.seed)
	b := client.Addr().As16()
	h.Write(b[:])
	p := client.Port()
	lp := local.Port()
	h.Write([]byte{byte(p), byte(p >> 8), byte(lp), byte(lp >> 8)})
	return uint32(h.Sum64() % uint64(len(t.buckets)))
}

func (t *Table) lock(bucket uint32) *sync.Mutex {
	m := &t.shards[bucket%numShards].Mutex
	m.Lock()
	return m
}

// Insert adds a connection in state Handshake, silent until Progress or
// Received. When the table is full it early-drops the unassured entry
// within evictionRange buckets of the new entry's bucket that has made the
// least progress (drop.go); if there is none it returns ErrFull and logs
// the rate-limited "table full" line. Each insert also advances the
// table's clock to the present, so that under a flood, when early drop
// compares stall times, the clock is as fine as the arrivals.
func (t *Table) Insert(client, local netip.AddrPort, kill Killer) (*Entry, error) {
	start := time.Now()
	t.advanceClock(start.UnixNano())
	b := t.bucketOf(client, local)
	if t.count.Add(1) > int64(t.cfg().Max) && !t.dropNear(b) {
		t.count.Add(-1)
		t.insertFailed.Add(1)
		t.drop.Add(1)
		t.logTableFull(time.Unix(0, t.clock.Load()))
		return nil, ErrFull
	}
	now := t.clock.Load()
	e := &Entry{
		id:     t.seq.Add(1)<<24 | uint64(b),
		Client: client,
		Local:  local,
		Start:  start,
		bucket: b,
		kill:   kill,
		table:  t,
	}
	e.stateSince.Store(now)
	e.lastActive.Store(now)
	e.silentCounted.Store(true)
	t.silentAdd(client.Addr(), 1)
	mu := t.lock(b)
	e.next = t.buckets[b]
	if e.next != nil {
		e.next.prev = e
	}
	t.buckets[b] = e
	e.linked = true
	mu.Unlock()
	t.insert.Add(1)
	return e, nil
}

func (t *Table) logTableFull(now time.Time) {
	if ok, suppressed := t.full.Allow(now); ok {
		if suppressed > 0 {
			t.logFull(throttle.Suppressed("conntable", suppressed))
		}
		t.logFull("conntable: table full, dropping connection")
	}
}

// unlinkLocked removes e from its chain; the shard lock must be held.
// It reports whether e was still linked.
func (t *Table) unlinkLocked(e *Entry) bool {
	if !e.linked {
		return false
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		t.buckets[e.bucket] = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.next, e.prev, e.linked = nil, nil, false
	t.count.Add(-1)
	t.uncountSilent(e)
	return true
}

// advanceClock moves the coarse clock forward to ns (never back: tests
// drive Expire with clocks of their own ahead of the present).
func (t *Table) advanceClock(ns int64) {
	for {
		c := t.clock.Load()
		if ns <= c || t.clock.CompareAndSwap(c, ns) {
			return
		}
	}
}

// Remove deletes e from the table. It is idempotent, and a no-op for an
// entry already early-dropped.
func (t *Table) Remove(e *Entry) {
	mu := t.lock(e.bucket)
	t.unlinkLocked(e)
	mu.Unlock()
}

// Lookup finds a live entry by ID.
func (t *Table) Lookup(id uint64) *Entry {
	b := uint32(id & (1<<24 - 1))
	if int(b) >= len(t.buckets) {
		return nil
	}
	mu := t.lock(b)
	defer mu.Unlock()
	for e := t.buckets[b]; e != nil; e = e.next {
		if e.id == id {
			t.found.Add(1)
			return e
		}
	}
	return nil
}

// Delete kills the entry with the given ID (conntrack -D): its owner closes
// the connection and removes it. It reports whether the entry existed.
func (t *Table) Delete(id uint64) bool {
	e := t.Lookup(id)
	if e == nil {
		return false
	}
	e.Kill(Deleted)
	return true
}

// Range calls f for every live entry, one bucket's lock held at a time; f
// must not call back into the table.
func (t *Table) Range(f func(e *Entry) bool) {
	for b := range t.buckets {
		mu := t.lock(uint32(b))
		for e := t.buckets[b]; e != nil; e = e.next {
			if !f(e) {
				mu.Unlock()
				return
			}
		}
		mu.Unlock()
	}
}

// List returns snapshots of the entries that match (all if match is nil),
// at most limit of them (no limit if limit <= 0).
func (t *Table) List(match func(e *Entry) bool, limit int) []Snapshot {
	now := t.clock.Load()
	cfg := t.cfg()
	var out []Snapshot
	t.Range(func(e *Entry) bool {
		if match != nil && !match(e) {
			return true
		}
		rx, tx := e.Bytes()
		s := e.State()
		out = append(out, Snapshot{
			ID: e.id, Client: e.Client.String(), Local: e.Local.String(), State: s.String(),
			User: e.User(), Start: e.Start, Idle: time.Duration(now - e.lastActive.Load()),
			TimeoutIn: time.Duration(e.deadline(cfg) - now), Rx: rx, Tx: tx, Silent: !e.Heard(),
		})
		return limit <= 0 || len(out) < limit
	})
	return out
}

// deadline is when e times out in its current state, unix nanoseconds.
func (e *Entry) deadline(cfg *Config) int64 {
	s := e.State()
	d := int64(cfg.Timeouts[s])
	if s == Handshake && !e.Heard() {
		d = min(d, int64(cfg.Silent))
	}
	if s == Handshake || s == Preauth {
		return e.stateSince.Load() + d
	}
	return e.lastActive.Load() + d
}

// Expire advances the table's clock to now and kills entries whose state
// timeout has passed (a silent Handshake entry's is Config.Silent); when
// the table is at least 95 % full it also reaps closing entries, and at
// the end of each 5 s interval with early drops it logs their summary
// (drop.go). Run calls it every second; tests call it with their own
// clock. It returns how many entries it killed.
func (t *Table) Expire(now time.Time) int {
	ns := now.UnixNano()
	t.clock.Store(ns)
	t.flushDropLog(ns)
	cfg := t.cfg()
	nearFull := t.count.Load()*100 >= int64(cfg.Max)*nearFullPercent
	type kill struct {
		e      *Entry
		r      Reason
		silent bool
	}
	var kills []kill
	t.Range(func(e *Entry) bool {
		if e.Killed() != NotKilled {
			return true
		}
		switch {
		case ns >= e.deadline(cfg):
			kills = append(kills, kill{e, Timeout, e.State() == Handshake && !e.Heard()})
		case nearFull && e.State() == Closing:
			kills = append(kills, kill{e, Reaped, false})
		}
		return true
	})
	n := 0
	for _, k := range kills {
		if k.e.Kill(k.r) {
			n++
			switch {
			case k.r == Reaped:
				t.reaped.Add(1)
			case k.silent:
				t.silentTimeout.Add(1)
				t.timeout.Add(1)
			default:
				t.timeout.Add(1)
			}
		}
	}
	return n
}

// CountByState returns the number of live entries in each state.
func (t *Table) CountByState() [numStates]int {
	var n [numStates]int
	t.Range(func(e *Entry) bool {
		n[e.State()]++
		return true
	})
	return n
}

// States lists the states in order, for callers that label by state.
func States() []State { return []State{Handshake, Preauth, Established, Closing} }

// Run calls Expire every interval until stop is closed.
func (t *Table) Run(stop <-chan struct{}, interval time.Duration) {
	tick.Every(stop, interval, func(now time.Time) {
		t.Expire(now)
		// The count of "table full" lines no later line carried.
		if n := t.full.Flush(now); n > 0 {
			t.logFull(throttle.Suppressed("conntable", n))
		}
	})
}

// KillAll kills every live entry for r (shutdown) and returns how many.
func (t *Table) KillAll(r Reason, match func(e *Entry) bool) int {
	var es []*Entry
	t.Range(func(e *Entry) bool {
		if match == nil || match(e) {
			es = append(es, e)
		}
		return true
	})
	n := 0
	for _, e := range es {
		if e.Kill(r) {
			n++
		}
	}
	return n
}
