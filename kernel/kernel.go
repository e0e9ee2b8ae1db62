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
// escalation up to Escalation.Max. Exempt addresses never enter. Every
// element has a timeout, so nothing imapgate adds outlives it unbounded;
// Close removes the table, and Sync recreates it if an administrator
// flushed or deleted it.
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
}

// DefaultEscalation: more than 100 refusals in 10 s; 30 s, doubling to
// 10 min.
var DefaultEscalation = Escalation{Refusals: 100, Window: 10 * time.Second, First: 30 * time.Second, Max: 10 * time.Minute}

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
	// MaxTracked bounds the addresses whose refusals are counted for
	// escalation; 0 means 65,536.
	MaxTracked int
}

// Reasons an element is in a set, the label of Stats.Added.
const (
	ReasonBan        = "ban"
	ReasonEscalation = "escalation"
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
	added   map[string]uint64
	recr    uint64
	closed  bool // Close ran: Sync must not make the table again

	esc     escalator
	pending chan escalated
	logRate *throttle.Throttle
}

type escalated struct {
	a       netip.Addr
	d       time.Duration
	n       int
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
	return &Kernel{
		o: o, be: be,
		members: make(map[netip.Prefix]Member),
		added:   map[string]uint64{ReasonBan: 0, ReasonEscalation: 0},
		esc:     escalator{cfg: o.Escalation, max: o.MaxTracked, m: make(map[netip.Addr]*escState)},
		pending: make(chan escalated, 256),
		logRate: throttle.New(5*time.Second, 50),
	}
}

// Refused counts a refusal of a by a connection or rate limit at now; a
// sustained burst escalates a to a kernel drop (applied by the next Sync,
// within a second). It never blocks.
func (k *Kernel) Refused(a netip.Addr, now time.Time) {
	a = a.Unmap()
	if k.o.Exempt != nil && k.o.Exempt(a) {
		return
	}
	if e, ok := k.esc.refused(a, now); ok {
		select {
		case k.pending <- e:
		default: // full: the next refusal tries again
		}
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
	if recreated, err := k.be.ensure(); err != nil {
		k.logf(courierlog.Err, "kernel: nftables table %s: %v", k.o.Table, err)
		return
	} else if recreated {
		k.recr++
		k.logf(courierlog.Warning, "kernel: nftables table %s was flushed or deleted; made again with %d elements", k.o.Table, len(k.members))
		for p, m := range k.members {
			if !m.DryRun && m.Until.After(now) {
				k.be.add(p, m.Until.Sub(now))
			}
		}
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
			k.put(p, b.Until, now, ReasonBan, "banned")
		}
	}
	for {
		select {
		case e := <-k.pending:
			p := netip.PrefixFrom(e.a, e.a.BitLen())
			if m, ok := k.members[p]; ok && !m.Until.Before(e.started.Add(e.d)) {
				continue
			}
			k.put(p, e.started.Add(e.d), now, ReasonEscalation,
				fmt.Sprintf("%d refusals in %s, level %d", e.n, k.o.Escalation.Window, e.level))
			continue
		default:
		}
		break
	}
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

// put adds p until until; the caller holds k.mu.
func (k *Kernel) put(p netip.Prefix, until, now time.Time, reason, why string) {
	d := until.Sub(now).Round(time.Second)
	if d <= 0 {
		return
	}
	m := Member{Prefix: p, Until: until, Reason: reason, DryRun: k.o.DryRun}
	if k.o.DryRun {
		k.members[p] = m
		k.added[reason]++
		k.logf(courierlog.Warning, "kernel: would drop new connections from %s for %s (%s; dry run: not added)", prefixString(p), d, why)
		return
	}
	if _, ok := k.members[p]; ok {
		k.be.del(p) // extended: the element's timeout is fixed when it is added
	}
	if err := k.be.add(p, until.Sub(now)); err != nil {
		k.logf(courierlog.Err, "kernel: adding %s: %v", prefixString(p), err)
		return
	}
	k.members[p] = m
	k.added[reason]++
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

func (k *Kernel) logf(p courierlog.Priority, format string, args ...any) {
	if k.o.Log == nil {
		return
	}
	ok, suppressed := k.logRate.Allow(time.Now())
	if suppressed > 0 {
		k.o.Log(courierlog.Warning, fmt.Sprintf("kernel: %d callbacks suppressed", suppressed))
	}
	if ok {
		k.o.Log(p, fmt.Sprintf(format, args...))
	}
}

// Members lists the elements in the sets at now, soonest to expire first.
func (k *Kernel) Members(now time.Time) []Member {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Member, 0, len(k.members))
	for _, m := range k.members {
		if m.Until.After(now) {
			out = append(out, m)
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
	s.Packets, s.Bytes, _ = k.be.counters()
	return s
}

// Run calls Sync every interval until stop is closed.
func (k *Kernel) Run(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			k.Sync(now)
		}
	}
}

// Close removes the table (clean stop); later Syncs do nothing. A second
// Close does nothing.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	return k.be.close()
}

// escalator counts refusals per address in fixed windows.
type escalator struct {
	cfg Escalation
	max int
	mu  sync.Mutex
	m   map[netip.Addr]*escState
	// dropped counts refusals not tracked because m was full.
	dropped atomic.Uint64
}

type escState struct {
	windowStart time.Time
	n           int
	level       int       // escalations so far
	last        time.Time // when it last escalated
	until       time.Time // its kernel drop ends
}

// refused counts one refusal of a at now, and returns an escalation when
// this one crosses the threshold.
func (e *escalator) refused(a netip.Addr, now time.Time) (escalated, bool) {
	c := e.cfg
	if c.Refusals <= 0 || c.Window <= 0 || c.First <= 0 {
		return escalated{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.m[a]
	if s == nil {
		if len(e.m) >= e.max {
			e.prune(now)
			if len(e.m) >= e.max {
				e.dropped.Add(1)
				return escalated{}, false
			}
		}
		s = &escState{windowStart: now}
		e.m[a] = s
	}
	if now.Sub(s.windowStart) >= c.Window {
		s.windowStart, s.n = now, 0
	}
	s.n++
	if s.n <= c.Refusals || now.Before(s.until) {
		return escalated{}, false
	}
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
	return escalated{a: a, d: d, n: n, level: s.level, started: now}, true
}

// prune forgets addresses with no refusal for a window and no drop in
// force (the caller holds mu).
func (e *escalator) prune(now time.Time) {
	for a, s := range e.m {
		if now.Sub(s.windowStart) >= e.cfg.Window && !now.Before(s.until) && now.Sub(s.last) > e.cfg.Max*4 {
			delete(e.m, a)
		}
	}
}
