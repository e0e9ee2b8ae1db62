package conntable

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// clockAt moves the table's clock to t0+d (Expire sets it; inserts only
// ever move it forward, and t0 is ahead of the present).
func clockAt(tb *Table, t0 time.Time, d time.Duration) { tb.Expire(t0.Add(d)) }

// Silent entries go before stalled ones, stalled ones before moving ones,
// and a moving one only when nothing else is left.
func TestEarlyDropLeastProgressFirst(t *testing.T) {
	tb, _ := New(Config{Max: 3, Buckets: 1}, nil)
	var kl killLog
	t0 := time.Now().Add(time.Hour)
	clockAt(tb, t0, 0)
	stalled, _ := tb.Insert(ap("192.0.2.1:1"), local, kl.killer("stalled"))
	stalled.Progress(300, true) // a ClientHello, then nothing
	stalled.Waiting()
	moving, _ := tb.Insert(ap("192.0.2.2:1"), local, kl.killer("moving"))
	clockAt(tb, t0, 2800*time.Millisecond)
	silent, _ := tb.Insert(ap("192.0.2.3:1"), local, kl.killer("silent"))
	clockAt(tb, t0, 3*time.Second)
	moving.Progress(300, true) // its handshake goes on
	moving.Waiting()           // for the client's next record
	clockAt(tb, t0, 3050*time.Millisecond)

	// The silent entry is the youngest, and still goes first (silent for
	// 250 ms: longer than a ClientHello takes).
	if _, err := tb.Insert(ap("192.0.2.10:1"), local, kl.killer("new1")); err != nil {
		t.Fatal(err)
	}
	if kl.reason("silent") != EarlyDrop || kl.reason("stalled") != NotKilled {
		t.Fatalf("first drop: %v", kl.kills)
	}
	tb.Lookup(idOf(tb, "192.0.2.10:1")).Progress(1, true)
	// Then the stalled one, not the moving one (a byte 50 ms ago).
	if _, err := tb.Insert(ap("192.0.2.11:1"), local, nil); err != nil {
		t.Fatal(err)
	}
	if kl.reason("stalled") != EarlyDrop || kl.reason("moving") != NotKilled {
		t.Fatalf("second drop: %v", kl.kills)
	}
	// Only moving entries left: the one waiting longest for its client,
	// not those whose owner is busy with what they sent.
	tb.Lookup(idOf(tb, "192.0.2.11:1")).Progress(1, true)
	if _, err := tb.Insert(ap("192.0.2.12:1"), local, nil); err != nil {
		t.Fatal(err)
	}
	if kl.reason("moving") != EarlyDrop || kl.reason("new1") != NotKilled {
		t.Fatalf("third drop: %v", kl.kills)
	}
	if st := tb.Stats(); st.EarlyDrop != 3 || st.EarlyDropSilent != 1 {
		t.Errorf("stats %+v", st)
	}
	_ = silent
}

func idOf(tb *Table, client string) uint64 {
	for _, s := range tb.List(nil, 0) {
		if s.Client == client {
			return s.ID
		}
	}
	return 0
}

// An address holding many silent entries loses them before an address
// holding one, even an older one; the silent counts follow first bytes and
// removals.
func TestEarlyDropAddressWithManySilentEntriesFirst(t *testing.T) {
	tb, _ := New(Config{Max: 6, Buckets: 1}, nil)
	var kl killLog
	t0 := time.Now().Add(time.Hour)
	clockAt(tb, t0, 0)
	tb.Insert(ap("192.0.2.1:1"), local, kl.killer("lonely"))
	clockAt(tb, t0, 200*time.Millisecond)
	var flood []*Entry
	for i := 0; i < 5; i++ {
		e, _ := tb.Insert(ap(fmt.Sprintf("198.51.100.7:%d", i+1)), local, kl.killer(fmt.Sprint("flood", i)))
		flood = append(flood, e)
	}
	if n := tb.SilentFrom(netip.MustParseAddr("198.51.100.7")); n != 5 {
		t.Fatalf("silent from the flooder: %d", n)
	}
	clockAt(tb, t0, 300*time.Millisecond)
	// lonely: 301 ms × 1; each flood entry: 101 ms × 5.
	if _, err := tb.Insert(ap("203.0.113.1:1"), local, nil); err != nil {
		t.Fatal(err)
	}
	if kl.reason("lonely") != NotKilled {
		t.Fatalf("the lone silent entry went before the flooder's: %v", kl.kills)
	}
	if n := tb.SilentFrom(netip.MustParseAddr("198.51.100.7")); n != 4 {
		t.Fatalf("silent from the flooder after a drop: %d, want 4", n)
	}
	var alive []*Entry
	for _, e := range flood {
		if e.Killed() == NotKilled {
			alive = append(alive, e)
		}
	}
	alive[0].Progress(1, true)
	alive[0].Progress(1, true) // counted once
	tb.Remove(alive[1])
	tb.Remove(alive[1])
	if n := tb.SilentFrom(netip.MustParseAddr("198.51.100.7")); n != 2 {
		t.Fatalf("silent from the flooder after a first byte and a removal: %d, want 2", n)
	}
}

// Early drops leave one line per interval: counts, then the top sources.
func TestEarlyDropSummaryLine(t *testing.T) {
	var logged []string
	tb, _ := New(Config{Max: 4, Buckets: 1}, func(m string) { logged = append(logged, m) })
	t0 := time.Now().Add(time.Hour)
	clockAt(tb, t0, 0)
	for i := 0; i < 4; i++ {
		tb.Insert(ap(fmt.Sprintf("192.0.2.1:%d", i+1)), local, func(Reason) {})
	}
	for i := 0; i < 30; i++ {
		src := "192.0.2.1"
		if i%3 == 0 {
			src = "[2001:db8::5]"
		}
		e, err := tb.Insert(ap(fmt.Sprintf("%s:%d", src, 100+i)), local, func(Reason) {})
		if err != nil {
			t.Fatal(err)
		}
		if i == 29 {
			e.Progress(1, true)
		}
	}
	clockAt(tb, t0, 4*time.Second)
	if len(logged) != 0 {
		t.Fatalf("summary before the interval ended: %q", logged)
	}
	clockAt(tb, t0, 5*time.Second)
	want := "conntable: early drop: 30 not-logged-in connections dropped at once to make room (30 silent, 0 stalled); top sources: "
	if len(logged) != 1 || !strings.HasPrefix(logged[0], want) {
		t.Fatalf("log = %q", logged)
	}
	if !strings.Contains(logged[0], "::ffff:192.0.2.1 (") || !strings.Contains(logged[0], "2001:db8::5 (") {
		t.Fatalf("sources missing: %q", logged[0])
	}
	clockAt(tb, t0, 20*time.Second)
	if len(logged) != 1 {
		t.Fatalf("a line for an interval without drops: %q", logged)
	}
	// The line says how long the drops took, not when it was written.
	clockAt(tb, t0, 21*time.Second) // the silent timeout has emptied the table: fill it
	for i := range 4 {
		tb.Insert(ap(fmt.Sprintf("192.0.2.8:%d", i+1)), local, func(Reason) {})
	}
	tb.Insert(ap("192.0.2.9:1"), local, func(Reason) {})
	clockAt(tb, t0, 21*time.Second+48*time.Millisecond)
	tb.Insert(ap("192.0.2.9:2"), local, func(Reason) {})
	clockAt(tb, t0, 27*time.Second)
	if want := "conntable: early drop: 2 not-logged-in connections dropped over 48ms to make room"; len(logged) != 2 || !strings.HasPrefix(logged[1], want) {
		t.Fatalf("log = %q, want a second line starting %q", logged, want)
	}
}

// A silent entry a few milliseconds old (its ClientHello may be unread)
// goes after one stalled for longer than a round trip could explain.
func TestEarlyDropSparesYoungSilentEntry(t *testing.T) {
	tb, _ := New(Config{Max: 2, Buckets: 1}, nil)
	var kl killLog
	t0 := time.Now().Add(time.Hour)
	clockAt(tb, t0, 0)
	stalled, _ := tb.Insert(ap("192.0.2.1:1"), local, kl.killer("stalled"))
	stalled.Progress(300, true)
	stalled.Waiting()
	clockAt(tb, t0, 2*time.Second)
	tb.Insert(ap("192.0.2.2:1"), local, kl.killer("young"))
	clockAt(tb, t0, 2*time.Second+10*time.Millisecond)
	if _, err := tb.Insert(ap("192.0.2.3:1"), local, nil); err != nil {
		t.Fatal(err)
	}
	if kl.reason("stalled") != EarlyDrop || kl.reason("young") != NotKilled {
		t.Fatalf("kills %v", kl.kills)
	}
}

// Half a TLS record is no progress: the entry stays silent.
func TestHalfRecordStaysSilent(t *testing.T) {
	tb, _ := New(Config{Max: 4}, nil)
	e, _ := tb.Insert(ap("192.0.2.1:1"), local, nil)
	e.Progress(100, false)
	if e.Heard() || tb.SilentFrom(netip.MustParseAddr("192.0.2.1")) != 1 {
		t.Fatal("half a record made the entry heard")
	}
	e.Progress(200, true)
	if !e.Heard() || tb.SilentFrom(netip.MustParseAddr("192.0.2.1")) != 0 {
		t.Fatal("a whole record left the entry silent")
	}
}

// An entry already killed (a timeout) whose owner has not removed it yet
// gives its slot first, and no one else is killed for the newcomer.
func TestEarlyDropReclaimsDyingEntry(t *testing.T) {
	tb, _ := New(Config{Max: 3, Buckets: 1}, nil)
	var kl killLog
	est, _ := tb.Insert(ap("192.0.2.1:1"), local, kl.killer("est"))
	est.SetState(Established)
	tb.Insert(ap("192.0.2.2:1"), local, kl.killer("silent"))
	dying, _ := tb.Insert(ap("192.0.2.3:1"), local, nil)
	dying.Kill(Timeout) // its owner is slow to Remove it
	if _, err := tb.Insert(ap("192.0.2.4:1"), local, nil); err != nil {
		t.Fatal(err)
	}
	if len(kl.kills) != 0 || tb.Stats().EarlyDrop != 0 || tb.Count() != 3 {
		t.Fatalf("kills %v, stats %+v, count %d", kl.kills, tb.Stats(), tb.Count())
	}
	tb.Remove(dying) // the owner, at last: a no-op
	if tb.Count() != 3 {
		t.Fatalf("count %d after the late Remove", tb.Count())
	}
}
