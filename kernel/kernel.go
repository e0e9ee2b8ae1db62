// Package kernel drops new connections from banned and flooding addresses
// in the Linux kernel, before conntrack sees them, as fail2ban does for
// courier from log lines, but without the daemon and the delay: imapgate
// owns one nftables table (inet imapgate) with timed sets of IPv4 and IPv6
// addresses and prefixes, and a chain at the raw prerouting priority (-300,
// before conntrack's -200, so a dropped packet creates no conntrack entry)
// that drops TCP SYNs from set members to the listening ports.
//
// What enters the sets: every address or prefix ban the limiter holds
// (Options.Bans, polled every second, so bans from any source arrive: auth
// failures, an administrator, a cluster), with the ban's own expiry as the
// element's timeout; and flooders: an address refused more than
// Escalation.Refusals times within Escalation.Window by a connection or rate
// limit (Kernel.Refused) is dropped for Escalation.First, doubling with each
// escalation up to Escalation.Max. A prefix (Options.PrefixOf: the
// limiter's aggregation prefix, /24 and /64 by default) is dropped the same
// way when Escalation.PrefixAddrs of its addresses are dropped by
// escalation at once, or when more than Escalation.Refusals refusals by a
// per-prefix limit (RefusedPrefix) come from it within Escalation.Window.
// Exempt addresses never enter; the keep sets (Options.Keep: the exempt
// and allow lists; Good: known-good addresses) are matched before the
// drops, so a dropped prefix never drops them. Every ban element has a
// timeout, so nothing imapgate adds outlives it unbounded (a keep element
// only ever lets a packet past this table's drops); Close removes the
// table, and Sync recreates it if an administrator flushed or deleted it.
//
// Each addition and expiry is logged in courier's shape, rate-limited like
// refusal lines (50 per 5 s, then "kernel: N callbacks suppressed").
package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/courierlog"
	"imapgate/internal/throttle"
	"imapgate/limiter"
)

// Escalation turns sustained refusal bursts from one address into kernel
// drops. The defaults let an honest client over its limit (a mail program
// retrying a few times a second at worst) never reach it: only a burst of
// more than 100 refusals within 10 s does.
type Escalation struct {
	Refusals int           // more than this many refusals within Window escalate; 0: off
	Window   time.Duration // counting window
	First    time.Duration // first kernel drop; doubles with each escalation
	Max      time.Duration // longest kernel drop
	// PrefixAddrs: a prefix with this many of its addresses dropped by
	// escalation at once is dropped whole (same durations, counted per
	// prefix); 0: only per-prefix limit refusals escalate a prefix.
	PrefixAddrs int
}

// DefaultEscalation: more than 100 refusals in 10 s; 30 s, doubling to
// 10 min.
var DefaultEscalation = Escalation{Refusals: 100, Window: 10 * time.Second, First: 30 * time.Second, Max: 10 * time.Minute, PrefixAddrs: 4}

// Options configure a Kernel.
type Options struct {
	// Ports are the TCP ports whose new connections the chain drops
	// (the listeners'). Required.
	Ports []uint16
	// DryRun logs what would be added and adds nothing (the table and
	// chain are still made, with empty sets).
	DryRun bool
	// Escalation; the zero value turns escalation off.
	Escalation Escalation
	// Exempt reports addresses that never enter the sets (limits.exempt,
	// limits.allow); nil: none.
	Exempt func(netip.Addr) bool
	// Bans lists the bans in force at now (Limiter.Bans); nil: none.
	// Address and prefix bans only enter the sets (see kernelBan).
	Bans func(now time.Time) []limiter.Ban
	// Log receives courier-shaped lines (additions, expiries, problems);
	// nil discards them.
	Log func(p courierlog.Priority, msg string)
	// Table names the nftables table (family inet); "" means "imapgate".
	// Tests use their own.
	Table string
	// MaxTracked bounds the addresses (and, separately, the prefixes and
	// the known-good addresses) tracked for escalation and the keep sets;
	// 0 means 65,536.
	MaxTracked int
	// PrefixOf gives an address's prefix for prefix escalation (the
	// limiter's Policy.PrefixOf); nil means /24 for IPv4, /64 for IPv6.
	PrefixOf func(netip.Addr) netip.Prefix
	// Keep lists what is never dropped even inside a dropped prefix
	// (limits.exempt and limits.allow), read at each Sync; nil: nothing.
	Keep func() []netip.Prefix
}

// Reasons an element is in a set, the label of Stats.Added.
const (
	ReasonBan              = "ban"
	ReasonEscalation       = "escalation"
	ReasonPrefixEscalation = "prefix_escalation"
)

// Member is one element of the sets, for ctl bans.
type Member struct {
	Prefix netip.Prefix `json:"prefix"`
	Until  time.Time    `json:"until"`
	Reason string       `json:"reason"`
	DryRun bool         `json:"dry_run,omitempty"`
}

// Stats are the kernel path's counters, for metrics.
type Stats struct {
	Elements4, Elements6 int               // elements in the IPv4 and IPv6 sets
	Added                map[string]uint64 // additions by reason
	Packets, Bytes       uint64            // dropped by the chain's rules (their counters)
	Recreated            uint64            // times the table was found missing and made again
}

// backend is what the sets live in: nftables on Linux.
type backend interface {
	ensure() (recreated bool, err error)
	add(p netip.Prefix, timeout time.Duration) error
	del(p netip.Prefix) error
	keep(p netip.Prefix, timeout time.Duration) error // timeout 0: none
	unkeep(p netip.Prefix) error
	counters() (packets, bytes uint64, err error)
	close() error
}

// ErrUnsupported is returned by Open where nftables cannot be used.
var ErrUnsupported = errors.New("nftables is not available on this system")

// Kernel keeps the sets in step with bans and escalations. Its methods are
// safe for concurrent use.
type Kernel struct {
	o  Options
	be backend

	mu      sync.Mutex
	members map[netip.Prefix]Member
	// shadowed are members a dropped prefix covers that outlast it (a
	// set's intervals must not overlap, so they left the set): each goes
	// back for what is left of it when the prefix's drop ends.
	shadowed map[netip.Prefix]Member
	added    map[string]uint64
	recr     uint64
	closed   bool                       // Close ran: Sync must not make the table again
	kept     map[netip.Prefix]time.Time // in the keep sets, until (zero: no timeout)
	// seen is the rules' packet and byte counters at their last reading,
	// base what earlier rules of this Kernel had counted before an
	// administrator deleted or flushed them (Sync makes them again, from
	// zero): Stats reports base+seen, so the totals never go back.
	seen, base [2]uint64
	seenAt     time.Time // when Sync last read them: at most once a second, not at every escalation's wake
	// carriedBans are the bans the Kernel before a reload had in its sets
	// (Carry): the first Sync adds them again without counting them.
	carriedBans map[netip.Prefix]time.Time

	goodMu sync.Mutex
	good   map[netip.Addr]time.Time // known-good addresses (Good), until

	esc     escalator
	pending chan escalated
	wake    chan struct{} // an escalation is pending: Run syncs now, not at its next tick
	logRate *throttle.Throttle
}

type escalated struct {
	p       netip.Prefix // an address is a full-length prefix
	d       time.Duration
	n       int // refusals (by a per-prefix limit, for a prefix) in the window
	addrs   int // for a prefix: its addresses dropped at once
	level   int
	started time.Time
}

// Open creates the table, sets and chain (replacing a table of the same
// name that a previous run left) and returns the Kernel. It fails without
// CAP_NET_ADMIN or without nf_tables: the caller then says so once and
// goes on with userspace limits only.
func Open(o Options) (*Kernel, error) {
	if len(o.Ports) == 0 {
		return nil, errors.New("kernel: no ports to guard")
	}
	if o.Table == "" {
		o.Table = "imapgate"
	}
	if o.MaxTracked <= 0 {
		o.MaxTracked = 1 << 16
	}
	be, err := openBackend(o.Table, o.Ports)
	if err != nil {
		return nil, err
	}
	return newKernel(o, be), nil
}

func newKernel(o Options, be backend) *Kernel {
	if o.PrefixOf == nil {
		o.PrefixOf = defaultPrefixOf
	}
	return &Kernel{
		o: o, be: be,
		members:  make(map[netip.Prefix]Member),
		shadowed: make(map[netip.Prefix]Member),
		kept:     make(map[netip.Prefix]time.Time),
		good:     make(map[netip.Addr]time.Time),
		added:    map[string]uint64{ReasonBan: 0, ReasonEscalation: 0, ReasonPrefixEscalation: 0},
		esc: escalator{cfg: o.Escalation, max: o.MaxTracked, prefixOf: o.PrefixOf,
			m: make(map[netip.Addr]*escState), pm: make(map[netip.Prefix]*prefixState)},
		pending: make(chan escalated, 256),
		wake:    make(chan struct{}, 1),
		logRate: throttle.New(5*time.Second, 50),
	}
}

// defaultPrefixOf: /24 for IPv4, /64 for IPv6 (the limiter's defaults).
func defaultPrefixOf(a netip.Addr) netip.Prefix {
	bits := 64
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// Refused counts a refusal of a by a connection or rate limit at now; a
// sustained burst escalates a to a kernel drop (applied by the next Sync,
// within a second), and enough of a prefix's addresses dropped at once
// escalate the prefix. It never blocks.
func (k *Kernel) Refused(a netip.Addr, now time.Time) { k.refused(a, false, now) }

// RefusedPrefix is Refused for a refusal by a per-prefix limit
// (max_per_prefix, rate_per_prefix): it also counts toward the prefix's
// own escalation.
func (k *Kernel) RefusedPrefix(a netip.Addr, now time.Time) { k.refused(a, true, now) }

func (k *Kernel) refused(a netip.Addr, prefixLimit bool, now time.Time) {
	a = a.Unmap()
	if k.o.Exempt != nil && k.o.Exempt(a) {
		return
	}
	esc := k.esc.refused(a, prefixLimit, now)
	for _, e := range esc {
		select {
		case k.pending <- e:
		default: // full: the next refusal tries again
		}
	}
	if len(esc) > 0 {
		select {
		case k.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// Good says that a is known-good until until (Limiter.OnKnownGood): the
// next Sync puts it in the keep sets, so a dropped prefix of its never
// drops it. It never blocks on the kernel; beyond Options.MaxTracked
// addresses, new ones are not kept.
func (k *Kernel) Good(a netip.Addr, until time.Time) {
	a = a.Unmap()
	k.goodMu.Lock()
	defer k.goodMu.Unlock()
	if _, ok := k.good[a]; ok || len(k.good) < k.o.MaxTracked {
		k.good[a] = until
	}
}

// kernelBan reports whether a ban belongs in the kernel: address and
// prefix bans do; a ban on a user (from any address) never does, since
// it would drop every other user behind the same address.
func kernelBan(b limiter.Ban) bool { return b.User == "" && b.Key.IsValid() }

// Sync makes the sets match now: it recreates the table if it is gone,
// adds new and extended bans and pending escalations, removes lifted bans
// at once, and logs the elements whose timeout passed. Run calls it every
// second; an unban calls it at once.
func (k *Kernel) Sync(now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	if now.Sub(k.seenAt) >= time.Second {
		if p, b, err := k.be.counters(); err == nil {
			k.noteCounters(p, b) // before ensure: a table made again counts from zero
		}
		k.seenAt = now
	}
	if recreated, err := k.be.ensure(); err != nil {
		k.logf(courierlog.Err, "kernel: nftables table %s: %v", k.o.Table, err)
		return
	} else if recreated {
		k.recr++
		k.logf(courierlog.Warning, "kernel: nftables table %s was flushed or deleted; made again with %d elements (and %d in the keep sets)", k.o.Table, len(k.members), len(k.kept))
		for p, m := range k.members {
			if !m.DryRun && m.Until.After(now) {
				k.be.add(p, m.Until.Sub(now))
			}
		}
		clear(k.kept) // syncKeep puts them back
	}
	banned := map[netip.Prefix]bool{}
	if k.o.Bans != nil {
		for _, b := range k.o.Bans(now) {
			if !kernelBan(b) || (k.o.Exempt != nil && b.Key.Bits() == b.Key.Addr().BitLen() && k.o.Exempt(b.Key.Addr())) {
				continue
			}
			p := unmapPrefix(b.Key)
			banned[p] = true
			if m, ok := k.members[p]; ok && !m.Until.Before(b.Until) {
				continue
			}
			until, carried := k.carriedBans[p]
			k.put(p, b.Until, now, ReasonBan, "banned", carried && !b.Until.After(until))
		}
		k.carriedBans = nil
	}
	for {
		select {
		case e := <-k.pending:
			p := e.p
			if m, ok := k.members[p]; ok && !m.Until.Before(e.started.Add(e.d)) {
				continue
			}
			if p.Bits() == p.Addr().BitLen() {
				k.put(p, e.started.Add(e.d), now, ReasonEscalation,
					fmt.Sprintf("%d refusals in %s, level %d", e.n, k.o.Escalation.Window, e.level), false)
				continue
			}
			if k.o.Exempt != nil && k.o.Exempt(p.Addr()) {
				continue // a known-good or listed network (its first address stands for it)
			}
			k.put(p, e.started.Add(e.d), now, ReasonPrefixEscalation,
				fmt.Sprintf("%d of its addresses dropped, %d refusals by per-prefix limits in %s, level %d",
					e.addrs, e.n, k.o.Escalation.Window, e.level), false)
			continue
		default:
		}
		break
	}
	k.syncKeep(now)
	defer k.restoreShadowed(now)
	for p, m := range k.members {
		switch {
		case !m.Until.After(now):
			delete(k.members, p)
			k.logf(courierlog.Info, "kernel: no longer dropping %s (expired)", prefixString(p))
		case m.Reason == ReasonBan && !banned[p]:
			delete(k.members, p)
			if !m.DryRun {
				if err := k.be.del(p); err != nil {
					k.logf(courierlog.Err, "kernel: removing %s: %v", prefixString(p), err)
				}
			}
			k.logf(courierlog.Info, "kernel: no longer dropping %s (unbanned)", prefixString(p))
		}
	}
}

// restoreShadowed puts back the shadowed members that are no longer
// covered by a dropped prefix, for what is left of their own drop, and
// forgets those whose drop has ended; the caller holds k.mu. (Without it,
// a /24 dropped for 30 s ended an address's own 10-minute drop inside it.)
func (k *Kernel) restoreShadowed(now time.Time) {
	for q, m := range k.shadowed {
		switch {
		case !m.Until.After(now):
			delete(k.shadowed, q)
		case coveredNow(k.members, q):
		default:
			delete(k.shadowed, q)
			if err := k.be.add(q, m.Until.Sub(now)); err != nil {
				k.logf(courierlog.Err, "kernel: adding %s again: %v", prefixString(q), err)
				continue
			}
			k.members[q] = m
			k.logf(courierlog.Warning, "kernel: dropping new connections from %s again for %s (its own drop outlasts its network's)",
				prefixString(q), m.Until.Sub(now).Round(time.Second))
		}
	}
}

// Covering returns the member of members, a shorter prefix whose DryRun
// is dryRun, that covers p (in the sets, such a prefix stands for p).
func Covering(members map[netip.Prefix]Member, p netip.Prefix, dryRun bool) (Member, bool) {
	for q, m := range members {
		if q.Bits() < p.Bits() && q.Contains(p.Addr()) && m.DryRun == dryRun {
			return m, true
		}
	}
	return Member{}, false
}

// coveredNow reports whether a dropped (not dry-run) prefix among members
// covers p.
func coveredNow(members map[netip.Prefix]Member, p netip.Prefix) bool {
	_, ok := Covering(members, p, false)
	return ok
}

// unmapPrefix turns ::ffff:a.b.c.d/n into a.b.c.d/(n-96): IPv4 clients
// are matched by the IPv4 set.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() {
		return netip.PrefixFrom(a.Unmap(), max(p.Bits()-96, 0)).Masked()
	}
	return p.Masked()
}

// rangeEnd is the first address after p: its start plus 2^(host bits).
func rangeEnd(p netip.Prefix) ([]byte, bool) {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	add := 1 << (host % 8)
	for i := len(b) - 1 - host/8; i >= 0; i-- {
		v := int(b[i]) + add
		b[i] = byte(v)
		if v <= 0xff {
			return b, true
		}
		add = 1
	}
	return nil, false
}

// put adds p until until; the caller holds k.mu. An addition counts
// towards Stats.Added under reason unless carried (the Kernel before a
// reload counted it, and the gateway adds its counts to this one's).
func (k *Kernel) put(p netip.Prefix, until, now time.Time, reason, why string, carried bool) {
	d := until.Sub(now).Round(time.Second)
	if d <= 0 {
		return
	}
	m := Member{Prefix: p, Until: until, Reason: reason, DryRun: k.o.DryRun}
	if qm, ok := Covering(k.members, p, k.o.DryRun); ok {
		// Inside a dropped prefix already (a set's intervals must not
		// overlap); if it outlasts the prefix, it comes in when the
		// prefix goes. Logged all the same: ctl bans lists it, and the
		// log must not be silent about a drop it shows.
		switch {
		case !k.o.DryRun && until.After(qm.Until):
			if !until.After(k.shadowed[p].Until) {
				return // known already (a ban is put again each Sync)
			}
			k.shadowed[p] = m
			if !carried {
				k.added[reason]++
			}
			k.logf(courierlog.Warning, "kernel: dropping new connections from %s for %s (%s): inside %s, dropped already; on its own from when that ends",
				prefixString(p), d, why, qm.Prefix)
		case reason != ReasonBan && !carried: // an escalation comes once; a covered ban would come each Sync
			is := "is"
			if k.o.DryRun {
				is = "would be"
			}
			k.logf(courierlog.Warning, "kernel: %s (%s) is inside %s, which %s dropped already for as long",
				prefixString(p), why, qm.Prefix, is)
		}
		return
	}
	if k.o.DryRun {
		k.members[p] = m
		if !carried {
			k.added[reason]++
		}
		k.logf(courierlog.Warning, "kernel: would drop new connections from %s for %s (%s; dry run: not added)", prefixString(p), d, why)
		return
	}
	if _, ok := k.members[p]; ok {
		k.be.del(p) // extended: the element's timeout is fixed when it is added
	}
	for q, m := range k.members {
		// A set's intervals must not overlap: what p covers goes, and if
		// it was to be dropped longer than p it comes back when p ends
		// (restoreShadowed).
		if q != p && p.Contains(q.Addr()) && q.Bits() > p.Bits() && !m.DryRun {
			k.be.del(q)
			delete(k.members, q)
			if m.Until.After(until) {
				k.shadowed[q] = m
			}
		}
	}
	if err := k.be.add(p, until.Sub(now)); err != nil {
		k.logf(courierlog.Err, "kernel: adding %s: %v", prefixString(p), err)
		return
	}
	k.members[p] = m
	if !carried {
		k.added[reason]++
	}
	k.logf(courierlog.Warning, "kernel: dropping new connections from %s for %s (%s)", prefixString(p), d, why)
}

// prefixString writes an address as courier does (::ffff:a.b.c.d), a
// prefix with its length.
func prefixString(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return courierlog.Addr(p.Addr())
	}
	return p.String()
}

// flushLog writes the count of kernel lines that no later line carried
// (Run calls it every tick).
func (k *Kernel) flushLog() {
	if n := k.logRate.Flush(time.Now()); n > 0 && k.o.Log != nil {
		k.o.Log(courierlog.Warning, throttle.Suppressed("kernel", n))
	}
}

func (k *Kernel) logf(p courierlog.Priority, format string, args ...any) {
	if k.o.Log == nil {
		return
	}
	ok, suppressed := k.logRate.Allow(time.Now())
	if suppressed > 0 {
		k.o.Log(courierlog.Warning, throttle.Suppressed("kernel", suppressed))
	}
	if ok {
		k.o.Log(p, fmt.Sprintf(format, args...))
	}
}

// Members lists the elements in the sets at now, and the drops a dropped
// network covers for now (shadowed: back in the sets when it ends),
// soonest to expire first.
func (k *Kernel) Members(now time.Time) []Member {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Member, 0, len(k.members)+len(k.shadowed))
	for _, ms := range []map[netip.Prefix]Member{k.members, k.shadowed} {
		for _, m := range ms {
			if m.Until.After(now) {
				out = append(out, m)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// Stats returns the counters; the packet and byte counts are read from
// the rules' counters.
func (k *Kernel) Stats() Stats {
	k.mu.Lock()
	s := Stats{Added: make(map[string]uint64, len(k.added)), Recreated: k.recr}
	for r, n := range k.added {
		s.Added[r] = n
	}
	for p, m := range k.members {
		if m.DryRun {
			continue
		}
		if p.Addr().Is4() {
			s.Elements4++
		} else {
			s.Elements6++
		}
	}
	k.mu.Unlock()
	p, b, err := k.be.counters()
	k.mu.Lock()
	if err == nil {
		k.noteCounters(p, b)
	}
	s.Packets, s.Bytes = k.base[0]+k.seen[0], k.base[1]+k.seen[1]
	k.mu.Unlock()
	return s
}

// noteCounters takes a reading of the rules' counters; k.mu is held. A
// reading lower than the last one means the rules were made again (an
// administrator deleted or flushed the table): what they had counted
// goes into base. Drops between the last reading (at most a Sync, a
// second, ago) and the deletion are not counted.
func (k *Kernel) noteCounters(p, b uint64) {
	if p < k.seen[0] || b < k.seen[1] {
		k.base[0] += k.seen[0]
		k.base[1] += k.seen[1]
	}
	k.seen = [2]uint64{p, b}
}

// Run calls Sync every interval until stop is closed.
//
// An escalation does not wait for the tick: it wakes Run, which syncs at
// once, but at most once per minWakeSync (a flood from many addresses
// escalates many at a time; one netlink batch takes them all). Waiting for
// the tick had left a flooder undropped for 0.8-1.1 s after it crossed the
// threshold (README, "Floods"), every attempt of it accepted and refused.
func (k *Kernel) Run(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last time.Time
	var later <-chan time.Time // a wake-up held back by minWakeSync
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			k.Sync(now)
			last = now
			k.flushLog()
		case <-k.wake:
			if later != nil {
				continue // already scheduled
			}
			if wait := minWakeSync - time.Since(last); wait > 0 {
				later = time.After(wait)
				continue
			}
			now := time.Now()
			k.Sync(now)
			last = now
		case now := <-later:
			later = nil
			k.Sync(now)
			last = now
		}
	}
}

// minWakeSync is the shortest time between two syncs that escalations
// asked for.
const minWakeSync = 50 * time.Millisecond

// Close removes the table (clean stop); later Syncs do nothing. A second
// Close does nothing.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if p, b, err := k.be.counters(); err == nil {
		k.noteCounters(p, b) // the last reading: the rules go with the table
	}
	return k.be.close()
}

// escalator counts refusals per address, and per-prefix-limit refusals
// and escalated addresses per prefix, in fixed windows.
type escalator struct {
	cfg      Escalation
	max      int
	prefixOf func(netip.Addr) netip.Prefix
	mu       sync.Mutex
	m        map[netip.Addr]*escState
	pm       map[netip.Prefix]*prefixState
	// dropped counts refusals not tracked because m or pm was full.
	dropped atomic.Uint64
}

type escState struct {
	windowStart time.Time
	n           int
	level       int       // escalations so far
	last        time.Time // when it last escalated
	until       time.Time // its kernel drop ends
}

// prefixState is escState for a prefix, with its addresses dropped by
// escalation and until when.
type prefixState struct {
	escState
	addrs map[netip.Addr]time.Time
}

// on reports whether escalation is configured at all.
func (c Escalation) on() bool { return c.Refusals > 0 && c.Window > 0 && c.First > 0 }

// refused counts one refusal of a at now (prefixLimit: by a per-prefix
// limit), and returns the escalations it causes: a's, its prefix's, or
// both.
func (e *escalator) refused(a netip.Addr, prefixLimit bool, now time.Time) []escalated {
	if !e.cfg.on() {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []escalated
	s := e.m[a]
	if s == nil {
		if len(e.m) >= e.max {
			e.prune(now)
		}
		if len(e.m) < e.max {
			s = &escState{windowStart: now}
			e.m[a] = s
		} else {
			e.dropped.Add(1)
		}
	}
	var addrEsc *escalated
	if s != nil {
		if x, ok := s.count(e.cfg, now, 1); ok {
			x.p = netip.PrefixFrom(a, a.BitLen())
			out = append(out, x)
			addrEsc = &out[0]
		}
	}
	if x, ok := e.prefixRefused(a, prefixLimit, addrEsc, now); ok {
		out = append(out, x)
	}
	return out
}

// count adds n refusals at now to s's window and escalates s when they
// pass the threshold; the caller holds mu.
func (s *escState) count(c Escalation, now time.Time, n int) (escalated, bool) {
	if now.Sub(s.windowStart) >= c.Window {
		s.windowStart, s.n = now, 0
	}
	s.n += n
	if s.n <= c.Refusals || now.Before(s.until) {
		return escalated{}, false
	}
	return s.escalate(c, now), true
}

// escalate drops s for its next duration: First, doubling up to Max.
func (s *escState) escalate(c Escalation, now time.Time) escalated {
	// A quiet spell as long as the longest drop forgives past escalations.
	if !s.last.IsZero() && now.Sub(s.last) > c.Max*4 {
		s.level = 0
	}
	d := c.First << min(s.level, 20)
	if c.Max > 0 && (d > c.Max || d <= 0) {
		d = c.Max
	}
	s.level++
	s.last, s.until = now, now.Add(d)
	n := s.n
	s.windowStart, s.n = now, 0
	return escalated{d: d, n: n, level: s.level, started: now}
}

// prefixRefused counts a's refusal toward its prefix (if prefixLimit) and
// a's escalation (if any) among the prefix's dropped addresses; the
// caller holds mu.
func (e *escalator) prefixRefused(a netip.Addr, prefixLimit bool, addrEsc *escalated, now time.Time) (escalated, bool) {
	if !prefixLimit && addrEsc == nil {
		return escalated{}, false
	}
	pf := e.prefixOf(a)
	if !pf.IsValid() || pf.Bits() >= a.BitLen() {
		return escalated{}, false
	}
	ps := e.pm[pf]
	if ps == nil {
		if len(e.pm) >= e.max {
			e.prune(now)
		}
		if len(e.pm) >= e.max {
			e.dropped.Add(1)
			return escalated{}, false
		}
		ps = &prefixState{escState: escState{windowStart: now}, addrs: map[netip.Addr]time.Time{}}
		e.pm[pf] = ps
	}
	if addrEsc != nil {
		ps.addrs[a] = addrEsc.started.Add(addrEsc.d)
	}
	for x, until := range ps.addrs {
		if !until.After(now) {
			delete(ps.addrs, x)
		}
	}
	n := 0
	if prefixLimit {
		n = 1
	}
	x, ok := ps.count(e.cfg, now, n)
	if !ok && e.cfg.PrefixAddrs > 0 && len(ps.addrs) >= e.cfg.PrefixAddrs && !now.Before(ps.until) {
		x, ok = ps.escalate(e.cfg, now), true
	}
	if !ok {
		return escalated{}, false
	}
	x.p, x.addrs = pf, len(ps.addrs)
	return x, true
}

// prune forgets addresses and prefixes with no refusal for a window and
// no drop in force (the caller holds mu).
func (e *escalator) prune(now time.Time) {
	for a, s := range e.m {
		if s.idle(e.cfg, now) {
			delete(e.m, a)
		}
	}
	for p, s := range e.pm {
		if s.idle(e.cfg, now) && len(s.addrs) == 0 {
			delete(e.pm, p)
		}
	}
}

func (s *escState) idle(c Escalation, now time.Time) bool {
	return now.Sub(s.windowStart) >= c.Window && !now.Before(s.until) && now.Sub(s.last) > c.Max*4
}

// syncKeep makes the keep sets hold Options.Keep's prefixes (no timeout)
// and the known-good addresses outside them (until their known-good time
// ends); the caller holds k.mu. A known-good address's element is renewed
// only when its time has grown by more than a minute.
func (k *Kernel) syncKeep(now time.Time) {
	want := map[netip.Prefix]time.Time{}
	var lists []netip.Prefix
	if k.o.Keep != nil {
		for _, p := range k.o.Keep() {
			if p.IsValid() {
				lists = append(lists, unmapPrefix(p))
			}
		}
	}
	sort.Slice(lists, func(i, j int) bool { return lists[i].Bits() < lists[j].Bits() })
	covered := func(p netip.Prefix) bool {
		for _, q := range lists {
			if q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				return true
			}
		}
		return false
	}
	for _, p := range lists {
		if !covered(p) {
			want[p] = time.Time{}
		}
	}
	k.goodMu.Lock()
	for a, until := range k.good {
		p := netip.PrefixFrom(a, a.BitLen())
		switch {
		case !until.After(now):
			delete(k.good, a)
		case !covered(p):
			if _, listed := want[p]; !listed {
				want[p] = until
			}
		}
	}
	k.goodMu.Unlock()
	for p, until := range k.kept {
		w, ok := want[p]
		if ok && (w.IsZero() == until.IsZero()) && w.Sub(until) <= time.Minute {
			continue
		}
		k.be.unkeep(p) // an error: it had timed out already
		delete(k.kept, p)
	}
	for p, until := range want {
		if _, ok := k.kept[p]; ok {
			continue
		}
		var d time.Duration
		if !until.IsZero() {
			d = until.Sub(now)
		}
		if err := k.be.keep(p, d); err != nil {
			k.logf(courierlog.Err, "kernel: keeping %s: %v", prefixString(p), err)
			continue
		}
		k.kept[p] = until
	}
}

// Kept lists the keep sets' elements (exempt, allow and known-good), for
// tests and ctl.
func (k *Kernel) Kept() []netip.Prefix {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]netip.Prefix, 0, len(k.kept))
	for p := range k.kept {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
