package gateway

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/config"
	"imapgate/courierlog"
	"imapgate/kernel"
	"imapgate/limiter"
)

// kernelPath is [kernel]: the nftables path (nil when off or unavailable;
// note says which) and the watch on the host's conntrack table. The watch
// runs at the interval its SetInterval last set (StartKernel, a reload
// that changed kernel.conntrack_watch; 0 at Gate.Close); the nftables path
// until its own kstop is closed (a reload that changes the rest of
// [kernel], or Gate.Close). mu serialises starting, re-timing and stopping
// both (StartKernel, a reload, Close) and guards what it sets.
type kernelPath struct {
	kern      atomic.Pointer[kernel.Kernel]
	conntrack *kernel.ConntrackWatch

	// goodMu orders a login's known-good news against the path's start
	// and stop: it goes to the running Kernel, or, with none, into
	// offGood (at most maxOffGood addresses), which the next one takes.
	goodMu  sync.Mutex
	offGood map[netip.Addr]time.Time

	mu      sync.Mutex
	note    string
	ports   []uint16
	kstop   chan struct{}  // the running Kernel's Run; nil when none
	carried kernel.Carried // the last Kernel's handover, until a new one takes it
	cfg     config.Kernel  // what the running path (or its absence) and the watch were made from
	started bool           // StartKernel ran
	closed  bool
}

// StartKernel starts the host conntrack watch ([kernel] conntrack_watch)
// and, if [kernel] nftables is on, the nftables path dropping banned and
// escalated addresses' new connections to the listeners' ports. Without
// CAP_NET_ADMIN or nf_tables it logs one line and goes on: the userspace
// limits still apply. Call it once, with the listeners, before serving.
func (g *Gate) StartKernel(lns []net.Listener) {
	kp := &g.kernel
	var ports []uint16
	for _, ln := range lns {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok && !slices.Contains(ports, uint16(ta.Port)) {
			ports = append(ports, uint16(ta.Port))
		}
	}
	g.Limiter.OnKnownGood(kp.good)
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.closed {
		return
	}
	c := g.Config().Kernel // under mu: a reload before this one is in it
	kp.ports, kp.started = ports, true
	// A first reading at once, for the startup report.
	kp.conntrack.SetInterval(c.ConntrackWatch.D())
	g.startNFTablesLocked(c)
}

// reloadKernel applies a reloaded [kernel]: a changed conntrack_watch
// starts, re-times or stops the host conntrack watch; when anything else
// changed, the running nftables path is stopped (its table removed) and a
// new one made from c, with the escalations in force and the escalation
// levels and refusal windows carried over (kernel.Carried; also across an
// off and on again, or a spell of nftables unavailable); bans come back
// from the limiter at its first Sync. Before StartKernel it does nothing
// (StartKernel reads the configuration in force).
func (g *Gate) reloadKernel(c config.Kernel) (notApplied string) {
	kp := &g.kernel
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if !kp.started || kp.closed {
		return ""
	}
	if c.ConntrackWatch != kp.cfg.ConntrackWatch {
		kp.cfg.ConntrackWatch = c.ConntrackWatch
		kp.conntrack.SetInterval(c.ConntrackWatch.D())
		watch := "off"
		if d := c.ConntrackWatch.D(); d > 0 {
			watch = "every " + d.String()
		}
		g.Log.Message(courierlog.Info, "imapgate: [kernel] reloaded: host conntrack watch "+watch)
	}
	// Unchanged, unless nftables was unavailable: the reload tries again
	// (another imapgate may have freed the table's name meanwhile).
	if c == kp.cfg && !(c.NFTables && kp.kern.Load() == nil) {
		return ""
	}
	// A table name another imapgate holds would leave this one with no
	// table at all: the running one stays, and a later reload tries again.
	if name := tableName(c); c.NFTables && kp.kern.Load() != nil && name != tableName(kp.cfg) {
		if err := kernel.TableHeld(name); err != nil {
			msg := fmt.Sprintf("[kernel] not reloaded: %v; %s stays", err, kp.note)
			g.Log.Message(courierlog.Warning, "imapgate: warning: "+msg)
			return msg
		}
	}
	g.stopNFTablesLocked()
	g.startNFTablesLocked(c)
	g.Log.Message(courierlog.Info, "imapgate: [kernel] reloaded: "+kp.note)
	return ""
}

// tableName is c's nftables table: kernel.table, "imapgate" by default.
func tableName(c config.Kernel) string {
	if c.Table == "" {
		return "imapgate"
	}
	return c.Table
}

// startNFTablesLocked opens the nftables path for c, if c turns it on,
// with what the last one handed over (kept until a path opens); kp.mu is
// held.
func (g *Gate) startNFTablesLocked(c config.Kernel) {
	kp := &g.kernel
	kp.cfg = c
	if !c.NFTables {
		kp.note = "nftables off"
		return
	}
	name := tableName(c)
	k, err := kernel.Open(kernel.Options{
		Ports: kp.ports, DryRun: c.DryRun, Escalation: escalationOf(c), Table: name,
		Exempt: g.neverDropped, Bans: g.Limiter.Bans, Log: g.Log.Message,
		PrefixOf: func(a netip.Addr) netip.Prefix { return g.Limiter.Policy().PrefixOf(a) },
		Keep:     g.keepLists,
	})
	if err != nil {
		kp.note = "nftables unavailable"
		g.Log.Message(courierlog.Warning, fmt.Sprintf(
			"imapgate: warning: [kernel] nftables = true, but nftables cannot be used: %v; going on with the userspace limits only", err))
		return
	}
	k.Carry(kp.carried, time.Now())
	kp.carried = kernel.Carried{}
	kp.goodMu.Lock()
	for a, until := range kp.offGood {
		k.Good(a, until)
	}
	kp.offGood = nil
	kp.kern.Store(k)
	kp.goodMu.Unlock()
	kp.note = fmt.Sprintf("nftables table inet %s on ports %v", name, kp.ports)
	if c.DryRun {
		kp.note += " (dry run)"
	}
	kp.kstop = make(chan struct{})
	go k.Run(kp.kstop, time.Second)
}

// stopNFTablesLocked stops the running nftables path, if any, removes its
// table, and keeps what it hands over for the next one; kp.mu is held.
func (g *Gate) stopNFTablesLocked() {
	kp := &g.kernel
	if kp.kstop != nil {
		close(kp.kstop)
		kp.kstop = nil
	}
	kp.goodMu.Lock() // a login that took k has told it before Handover
	k := kp.kern.Swap(nil)
	kp.goodMu.Unlock()
	if k != nil {
		if err := k.Close(); err != nil {
			g.Log.Message(courierlog.Info, fmt.Sprintf("imapgate: removing the nftables table: %v", err))
		}
		kp.carried = k.Handover(time.Now()) // after Close: no Sync takes from its queue
	}
}

// maxOffGood bounds the known-good addresses kept while the nftables path
// is off, as kernel.Options.MaxTracked's default bounds a Kernel's.
const maxOffGood = 1 << 16

// good is the limiter's known-good news (Limiter.OnKnownGood): the running
// Kernel keeps the address out of a dropped prefix; with the path off or
// unavailable, it is kept for the next one, so turning nftables on again
// does not drop an office that became known-good meanwhile.
func (kp *kernelPath) good(a netip.Addr, until time.Time) {
	kp.goodMu.Lock()
	defer kp.goodMu.Unlock()
	if k := kp.kern.Load(); k != nil {
		k.Good(a, until)
		return
	}
	if kp.offGood == nil {
		kp.offGood = make(map[netip.Addr]time.Time)
	}
	if len(kp.offGood) >= maxOffGood {
		maps.DeleteFunc(kp.offGood, func(_ netip.Addr, u time.Time) bool { return !u.After(time.Now()) })
	}
	if old, ok := kp.offGood[a]; ok || len(kp.offGood) < maxOffGood {
		if until.After(old) {
			kp.offGood[a] = until
		}
	}
}

// closeKernel stops the watch (its goroutine has ended on return) and
// removes the nftables table.
func (g *Gate) closeKernel() {
	kp := &g.kernel
	kp.mu.Lock()
	defer kp.mu.Unlock()
	kp.closed = true
	kp.conntrack.SetInterval(0)
	g.stopNFTablesLocked()
}

// keepLists are the networks never dropped in the kernel, even inside a
// dropped prefix: limits.exempt and limits.allow.
func (g *Gate) keepLists() []netip.Prefix {
	p := g.Limiter.Policy()
	return append(slices.Clip(p.Exempt), p.Allow...)
}

// neverDropped: exempt, allow-listed and known-good addresses (an office
// behind NAT) never enter the sets.
func (g *Gate) neverDropped(addr netip.Addr) bool {
	if g.Limiter.KnownGood(addr, time.Now()) {
		return true
	}
	p := g.Limiter.Policy()
	for _, list := range [][]netip.Prefix{p.Exempt, p.Allow} {
		for _, q := range list {
			if q.Contains(addr) {
				return true
			}
		}
	}
	return false
}

// escalating are the limits whose refusals count toward a kernel drop:
// connection and rate limits. Bans are in the kernel already; deny and
// allow lists and the per-user limit are not floods.
var escalating = [limiter.NumReasons]bool{
	limiter.RatePerIP: true, limiter.RatePerPrefix: true, limiter.MaxConnections: true,
	limiter.MaxPerIP: true, limiter.MaxPerPrefix: true, limiter.MaxPreauthPerIP: true,
}

// refused is the proxy's OnRefused: it feeds escalation (a per-prefix
// limit's refusals also count toward the prefix's).
func (g *Gate) refused(addr netip.Addr, r limiter.Reason, now time.Time) {
	k := g.kernel.kern.Load()
	switch {
	case k == nil || r >= limiter.NumReasons || !escalating[r]:
	case r == limiter.RatePerPrefix || r == limiter.MaxPerPrefix:
		k.RefusedPrefix(addr, now)
	default:
		k.Refused(addr, now)
	}
}

// KernelStats feeds the metrics; ok is false when the nftables path is
// off. The counters go on from those of the Kernels earlier reloads
// replaced (kernel.Carried); the element counts are the running one's.
func (g *Gate) KernelStats() (kernel.Stats, bool) {
	if k := g.kernel.kern.Load(); k != nil {
		return k.Stats(), true
	}
	return kernel.Stats{}, false
}

// KernelMembers lists the sets' elements for /bans (nil when off).
func (g *Gate) KernelMembers(now time.Time) []kernel.Member {
	if k := g.kernel.kern.Load(); k != nil {
		return k.Members(now)
	}
	return nil
}

// Unbanned takes a lifted ban out of the kernel at once (admin's AfterUnban).
func (g *Gate) Unbanned() {
	if k := g.kernel.kern.Load(); k != nil {
		k.Sync(time.Now())
	}
}

// Conntrack reads the host conntrack watch's last reading (metrics).
func (g *Gate) Conntrack() (kernel.Conntrack, bool) { return g.kernel.conntrack.Last() }

// KernelNote says, for the startup report, what the kernel path is and
// the host's conntrack fill.
func (g *Gate) KernelNote() string { return "kernel " + g.KernelState() }

// KernelState is KernelNote without its "kernel " (ctl status, /status):
// "nftables table inet NAME on ports [P…]", "nftables off" or "nftables
// unavailable", then "; host conntrack " and its fill, "not loaded" or
// "not watched" (kernel.conntrack_watch = "0s").
func (g *Gate) KernelState() string {
	ct := "not loaded"
	if c, ok := g.kernel.conntrack.Last(); ok {
		ct = c.String()
	} else if g.kernel.conntrack.Interval() == 0 {
		ct = "not watched"
	}
	g.kernel.mu.Lock()
	note := g.kernel.note
	g.kernel.mu.Unlock()
	if note == "" {
		note = "not started"
	}
	return fmt.Sprintf("%s; host conntrack %s", note, ct)
}
