package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"imapgate/courierlog"
	"imapgate/internal/tick"
)

// Conntrack is the host's connection-tracking table, as the kernel shows
// it in /proc/sys/net/netfilter (nf_conntrack_count, nf_conntrack_max,
// per network namespace) and /sys/module/nf_conntrack/parameters/hashsize
// (the bucket count). When the count reaches max, the kernel logs
// "nf_conntrack: table full, dropping packet" and drops every new
// connection, honest or not: the flood story imapgate's own table mirrors.
type Conntrack struct {
	Count   int // entries
	Max     int // nf_conntrack_max
	Buckets int // hashsize; 0 if unknown
}

// Percent is Count as a percentage of Max.
func (c Conntrack) Percent() float64 {
	if c.Max <= 0 {
		return 0
	}
	return 100 * float64(c.Count) / float64(c.Max)
}

func (c Conntrack) String() string {
	s := fmt.Sprintf("%d of %d entries (%.0f%%)", c.Count, c.Max, c.Percent())
	if c.Buckets > 0 {
		s += fmt.Sprintf(", %d buckets", c.Buckets)
	}
	return s
}

// ReadConntrack reads the table's figures under root ("/" on a host; tests
// pass a directory of their own). ok is false when conntrack is not loaded
// (no nf_conntrack_count: nothing to watch); a missing hashsize leaves
// Buckets 0 (nf_conntrack_buckets is tried first).
func ReadConntrack(root string) (c Conntrack, ok bool) {
	read := func(path string) (int, bool) {
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			return 0, false
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		return n, err == nil
	}
	if c.Count, ok = read("proc/sys/net/netfilter/nf_conntrack_count"); !ok {
		return Conntrack{}, false
	}
	if c.Max, ok = read("proc/sys/net/netfilter/nf_conntrack_max"); !ok {
		return Conntrack{}, false
	}
	if n, ok := read("proc/sys/net/netfilter/nf_conntrack_buckets"); ok {
		c.Buckets = n
	} else if n, ok := read("sys/module/nf_conntrack/parameters/hashsize"); ok {
		c.Buckets = n
	}
	return c, true
}

// ConntrackLevels are the fills (percent) at which the watch warns.
var ConntrackLevels = []float64{80, 95}

// ConntrackRemedy is the seed's remedy, for the warnings; with nftables
// off, imapgate's own kernel path is suggested too.
func ConntrackRemedy(nftablesOn bool) string {
	r := "raise net.netfilter.nf_conntrack_max, set hashsize (/sys/module/nf_conntrack/parameters/hashsize) to max/4, " +
		"shorten net.netfilter.nf_conntrack_tcp_timeout_time_wait and _close_wait"
	if nftablesOn {
		return r
	}
	return r + ", or enable [kernel] nftables so banned and flooding addresses make no entries"
}

// ConntrackWarning is the warning for c at level (percent), in the shape
// of imapgate's other kernel lines; nftablesOn says whether imapgate's
// nftables path runs (the remedy then does not suggest it).
func ConntrackWarning(c Conntrack, level float64, nftablesOn bool) string {
	return fmt.Sprintf("kernel: warning: conntrack table over %.0f%% full: %s; when full the kernel drops every new connection (\"nf_conntrack: table full, dropping packet\"): %s",
		level, c, ConntrackRemedy(nftablesOn))
}

// ConntrackWatch reads the table periodically, keeps the last reading for
// metrics, and warns when the fill crosses a level upwards (once per
// crossing: it warns again only after the fill has fallen below the level).
// SetInterval starts, re-times and stops its one goroutine; a re-time keeps
// the last reading and the levels warned about, so a reload never warns
// again about a crossing it warned about already.
type ConntrackWatch struct {
	Root string                                  // "/" unless testing
	Log  func(p courierlog.Priority, msg string) // nil: discard
	// NFTablesOn reports whether imapgate's nftables path runs, for the
	// warning's remedy; nil: it does not.
	NFTablesOn func() bool

	mu     sync.Mutex
	last   Conntrack
	ok     bool
	warned int // levels warned about and not yet left

	run      sync.Mutex // SetInterval, one at a time; guards the three below
	interval time.Duration
	stop     chan struct{} // closed to end the goroutine; nil when none runs
	done     chan struct{} // closed when it has ended
}

// Check reads the table once and warns if a level was crossed. It returns
// the reading (ok false: no conntrack here).
func (w *ConntrackWatch) Check() (Conntrack, bool) {
	c, ok := ReadConntrack(w.Root)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last, w.ok = c, ok
	if !ok {
		return c, false
	}
	level := 0
	for i, l := range ConntrackLevels {
		if c.Percent() >= l {
			level = i + 1
		}
	}
	if level > w.warned && w.Log != nil {
		w.Log(courierlog.Warning, ConntrackWarning(c, ConntrackLevels[level-1], w.NFTablesOn != nil && w.NFTablesOn()))
	}
	w.warned = level
	return c, true
}

// Last is the last reading; ok is false when the watch is off or there is
// no conntrack to read.
func (w *ConntrackWatch) Last() (Conntrack, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.ok
}

// Interval is how often the watch reads the table; 0: it is off.
func (w *ConntrackWatch) Interval() time.Duration {
	w.run.Lock()
	defer w.run.Unlock()
	return w.interval
}

// SetInterval makes the watch read the table every d from now on (start
// and reload): turned on (from 0), it reads once at once, so the startup
// report and ctl status have figures, then every d; re-timed, the running
// goroutine ends and one with the new interval starts, the reading and the
// warned levels kept; turned off (d <= 0), the goroutine has ended when
// SetInterval returns, and the reading and the warned levels are forgotten
// (metrics and status show no stale figures; turned on again, it starts
// afresh, as at start). The same d again changes nothing.
func (w *ConntrackWatch) SetInterval(d time.Duration) {
	d = max(d, 0)
	w.run.Lock()
	defer w.run.Unlock()
	if d == w.interval {
		return
	}
	if w.stop != nil {
		close(w.stop)
		<-w.done
		w.stop, w.done = nil, nil
	}
	was := w.interval
	w.interval = d
	switch {
	case d == 0:
		w.mu.Lock()
		w.last, w.ok, w.warned = Conntrack{}, false, 0
		w.mu.Unlock()
		return
	case was == 0:
		w.Check()
	}
	stop, done := make(chan struct{}), make(chan struct{})
	w.stop, w.done = stop, done
	go func() {
		defer close(done)
		tick.Every(stop, d, func(time.Time) { w.Check() })
	}()
}
