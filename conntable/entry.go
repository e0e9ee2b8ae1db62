// Package conntable is a bounded table of live client connections with the
// semantics of Linux netfilter conntrack: a hard maximum (nf_conntrack_max)
// over a fixed number of hash buckets (hashsize); a state per entry, each
// with its own timeout; when full, early drop of an unassured
// (not-logged-in) entry near the new entry's bucket, and never of an
// established one; reaping of closing entries when 95 % full; and a
// rate-limited "table full, dropping connection" line with a
// "callbacks suppressed" count.
//
// Conntrack tells an unreplied flow from one that has seen a reply, and
// gives the first a short timeout; the table makes the same distinction on
// what the client sent: an entry that has received nothing whole (no byte,
// or not even one complete TLS record: half a ClientHello) is "silent",
// times out after Config.Silent, and is the first an early drop takes
// (drop.go).
//
// The table never closes sockets itself. Each entry carries a Killer, the
// owner's hook that interrupts the connection's I/O; the owner then closes
// the session the way courier would and calls Remove.
package conntable

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// State is where a connection is in its life.
type State uint32

// States, in order. Handshake and Preauth entries are "unassured" (conntrack's
// term) and may be early-dropped; Established entries never are.
const (
	Handshake   State = iota // TCP accepted, TLS not finished
	Preauth                  // greeting sent, not logged in
	Established              // logged in: conntrack's "assured"
	Closing                  // LOGOUT/BYE seen or one side closed
	numStates
)

var stateNames = [numStates]string{"handshake", "preauth", "established", "closing"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "unknown"
}

// ParseState is the inverse of String.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n == s {
			return State(i), true
		}
	}
	return 0, false
}

// Assured reports whether entries in s are protected from early drop. An
// entry that was ever Established stays protected in Closing too (conntrack's
// IPS_ASSURED bit is sticky): Entry.Assured.
func (s State) Assured() bool { return s == Established }

// Reason says why the table (or an admin) killed an entry.
type Reason uint32

// Kill reasons.
const (
	NotKilled Reason = iota
	Timeout          // the state's timeout passed
	EarlyDrop        // evicted to make room for a new connection
	Reaped           // closing entry reaped early because the table is near full
	Deleted          // deleted by an admin (conntrack -D)
	Shutdown         // the server is shutting down
)

var reasonNames = [...]string{"", "timeout", "early_drop", "reaped", "deleted", "shutdown"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Killer interrupts a connection's I/O so its owner notices the kill. It is
// called at most once per entry, never with a table lock held, and must not
// block.
type Killer func(Reason)

// Entry is one tracked connection. Fields without a lock are written before
// the entry is published; the rest are atomics. Owners update state and
// counters; the table reads them.
type Entry struct {
	id     uint64
	Client netip.AddrPort // as seen after any PROXY header
	Local  netip.AddrPort
	Start  time.Time

	bucket     uint32
	next, prev *Entry // bucket chain, guarded by the bucket's shard lock
	linked     bool   // guarded by the shard lock

	state      atomic.Uint32
	stateSince atomic.Int64 // unix nanoseconds
	lastActive atomic.Int64 // unix nanoseconds, coarse (the table's clock)
	user       atomic.Pointer[string]
	rx, tx     atomic.Uint64 // bytes from and to the client
	// heard: the client has sent something whole: a complete TLS record
	// during the handshake, any plaintext after it.
	heard atomic.Bool
	// assured: the entry has been Established (sticky, as IPS_ASSURED).
	assured atomic.Bool
	// waitFrom: since when (the table's clock) the owner has been waiting
	// to read from the client with nothing arrived; 0 while it is busy
	// with what arrived (early drop's stall clock).
	waitFrom atomic.Int64
	// silentCounted: the entry is counted in the table's silent entries of
	// its address; whoever clears it (first byte or unlink) uncounts it.
	silentCounted atomic.Bool
	killed        atomic.Uint32 // Reason
	kill          Killer
	table         *Table
}

// ID is the entry's identifier, unique for the life of the table. It
// encodes the bucket, so Lookup by ID walks one chain.
func (e *Entry) ID() uint64 { return e.id }

// State returns the current state.
func (e *Entry) State() State { return State(e.state.Load()) }

// SetState moves the entry to s and restarts that state's clock.
func (e *Entry) SetState(s State) {
	now := e.table.clock.Load()
	e.stateSince.Store(now)
	e.lastActive.Store(now)
	if s.Assured() {
		e.assured.Store(true)
	}
	e.state.Store(uint32(s))
}

// Assured reports whether the entry is, or has been, Established: such an
// entry is never early-dropped, in Closing neither.
func (e *Entry) Assured() bool { return e.assured.Load() }

// SetUser records the logged-in user.
func (e *Entry) SetUser(u string) { e.user.Store(&u) }

// User returns the user name, or "" before login.
func (e *Entry) User() string {
	if p := e.user.Load(); p != nil {
		return *p
	}
	return ""
}

// Received counts n bytes of plaintext from the client and refreshes the
// inactivity timer. It costs four atomic operations and no clock read.
func (e *Entry) Received(n int) {
	e.rx.Add(uint64(n))
	e.table.rx.Add(uint64(n))
	e.Progress(n, true)
}

// Progress records n bytes from the client that Received does not count
// (TLS records, read before there is any plaintext): the inactivity timer
// restarts, and the owner is busy with them until the next Waiting. whole
// says they completed something (a TLS record): from then on the entry is
// no longer silent. Half a ClientHello followed by nothing is no more
// progress than nothing: the entry stays silent. n == 0 records nothing.
func (e *Entry) Progress(n int, whole bool) {
	if n <= 0 {
		return
	}
	e.lastActive.Store(e.table.clock.Load())
	e.waitFrom.Store(0)
	if whole && !e.heard.Load() {
		e.heard.Store(true)
		e.table.uncountSilent(e)
	}
}

// Waiting says that the owner now waits for the client's next byte: from
// here until Progress, the entry is stalled on its client (early drop
// ranks by how long). Before its first Waiting, and after each Progress,
// the owner is busy and the entry counts as moving.
func (e *Entry) Waiting() { e.waitFrom.Store(e.table.clock.Load()) }

// Touch refreshes the inactivity timer without counting bytes: the owner
// wrote to the client what Sent does not count (TLS handshake records).
func (e *Entry) Touch() { e.lastActive.Store(e.table.clock.Load()) }

// Heard reports whether the client has sent something whole (a complete
// TLS record, or plaintext): an entry that has not is silent.
func (e *Entry) Heard() bool { return e.heard.Load() }

// Sent counts n bytes to the client and refreshes the inactivity timer.
func (e *Entry) Sent(n int) {
	e.tx.Add(uint64(n))
	e.table.tx.Add(uint64(n))
	e.lastActive.Store(e.table.clock.Load())
}

// Bytes returns bytes received from and sent to the client.
func (e *Entry) Bytes() (rx, tx uint64) { return e.rx.Load(), e.tx.Load() }

// Killed returns why the entry was killed, or NotKilled.
func (e *Entry) Killed() Reason { return Reason(e.killed.Load()) }

// Kill marks the entry killed for r (the first reason wins) and calls its
// Killer. It reports whether this call was the one that killed it.
func (e *Entry) Kill(r Reason) bool {
	if !e.killed.CompareAndSwap(uint32(NotKilled), uint32(r)) {
		return false
	}
	if e.kill != nil {
		e.kill(r)
	}
	return true
}

// Snapshot is a copy of an entry for listing (conntrack -L).
type Snapshot struct {
	ID        uint64        `json:"id"`
	Client    string        `json:"client"`
	Local     string        `json:"local"`
	State     string        `json:"state"`
	User      string        `json:"user,omitempty"`
	Start     time.Time     `json:"start"`
	Idle      time.Duration `json:"idle_ns"`
	TimeoutIn time.Duration `json:"timeout_in_ns"`
	Rx        uint64        `json:"rx"`
	Tx        uint64        `json:"tx"`
	// Silent: nothing whole from the client yet (see Config.Silent).
	Silent bool `json:"silent,omitempty"`
}
