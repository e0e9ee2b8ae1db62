// Package throttle bounds how often something noisy may happen, as the
// kernel's printk_ratelimit does for log lines.
package throttle

import (
	"strconv"
	"sync"
	"time"
)

// Throttle is the kernel's ___ratelimit: at most burst messages per
// interval; when a new interval starts after messages were dropped, the
// first message reports how many were ("N callbacks suppressed").
type Throttle struct {
	mu       sync.Mutex
	interval time.Duration
	burst    int
	begin    time.Time
	printed  int
	missed   int
}

// New allows burst messages per interval; the kernel's net_ratelimit
// uses 10 per 5 s.
func New(interval time.Duration, burst int) *Throttle {
	return &Throttle{interval: interval, burst: burst}
}

// Allow reports whether a message may be printed at now, and how many were
// suppressed in the window that just ended.
func (r *Throttle) Allow(now time.Time) (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.begin.IsZero() || now.Sub(r.begin) >= r.interval {
		suppressed = r.missed
		r.begin, r.printed, r.missed = now, 0, 0
	}
	if r.printed < r.burst {
		r.printed++
		return true, suppressed
	}
	r.missed++
	return false, 0
}

// Flush returns, once the interval in which messages were suppressed has
// passed, how many were, and starts a new interval; otherwise 0. The
// kernel reports the count only with the next message, which may never
// come once a flood stops: a caller that calls Flush now and then writes
// it at the latest one call after the interval ends.
func (r *Throttle) Flush(now time.Time) (suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.missed == 0 || now.Sub(r.begin) < r.interval {
		return 0
	}
	suppressed = r.missed
	r.begin, r.printed, r.missed = now, 0, 0
	return suppressed
}

// Suppressed is the kernel's line for n messages of source that a
// throttle suppressed: "source: n callbacks suppressed".
func Suppressed(source string, n int) string {
	return source + ": " + strconv.Itoa(n) + " callbacks suppressed"
}
