package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/courierlog"
	"imapgate/kernel"
	"imapgate/limiter"
)

// kernelPath is [kernel]: the nftables path (nil when off or unavailable;
// note says which) and the watch on the host's conntrack table. Both run
// until stop is closed (Gate.Close). [kernel] needs a restart.
type kernelPath struct {
	kern      atomic.Pointer[kernel.Kernel]
	note      string
	conntrack *kernel.ConntrackWatch
	stop      chan struct{}
	stopOnce  sync.Once
}

// StartKernel starts the host conntrack watch ([kernel] conntrack_watch)
// and, if [kernel] nftables is on, the nftables path dropping banned and
// escalated addresses' new connections to the listeners' ports. Without
// CAP_NET_ADMIN or nf_tables it logs one line and goes on: the userspace
// limits still apply. Call it once, with the listeners, before serving.
func (g *Gate) StartKernel(lns []net.Listener) {
	kp := &g.kernel
	cfg := g.Config()
	if d := cfg.Kernel.ConntrackWatch.D(); d > 0 {
		kp.conntrack.Check() // a first reading for the startup report
		go kp.conntrack.Run(kp.stop, d)
	}
	if !cfg.Kernel.NFTables {
		kp.note = "nftables off"
		return
	}
	var ports []uint16
	for _, ln := range lns {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok && !slices.Contains(ports, uint16(ta.Port)) {
			ports = append(ports, uint16(ta.Port))
		}
	}
	k, err := kernel.Open(kernel.Options{
		Ports: ports, DryRun: cfg.Kernel.DryRun, Escalation: Escalation(cfg),
		Exempt: g.neverDropped, Bans: g.Limiter.Bans, Log: g.Log.Message,
	})
	if err != nil {
		kp.note = "nftables unavailable"
		g.Log.Message(courierlog.Warning, fmt.Sprintf(
			"imapgate: warning: [kernel] nftables = true, but nftables cannot be used: %v; going on with the userspace limits only", err))
		return
	}
	kp.kern.Store(k)
	kp.note = fmt.Sprintf("nftables table inet imapgate on ports %v", ports)
	if cfg.Kernel.DryRun {
		kp.note += " (dry run)"
	}
	go k.Run(kp.stop, time.Second)
}

// closeKernel stops the watch and removes the nftables table.
func (g *Gate) closeKernel() {
	kp := &g.kernel
	kp.stopOnce.Do(func() { close(kp.stop) })
	if k := kp.kern.Load(); k != nil {
		if err := k.Close(); err != nil {
			g.Log.Message(courierlog.Info, fmt.Sprintf("imapgate: removing the nftables table: %v", err))
		}
	}
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

// refused is the proxy's OnRefused: it feeds escalation.
func (g *Gate) refused(addr netip.Addr, r limiter.Reason) {
	if k := g.kernel.kern.Load(); k != nil && r < limiter.NumReasons && escalating[r] {
		k.Refused(addr, time.Now())
	}
}

// KernelStats feeds the metrics; ok is false when the nftables path is off.
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
func (g *Gate) KernelNote() string {
	ct := "not loaded"
	if c, ok := g.kernel.conntrack.Last(); ok {
		ct = c.String()
	}
	note := g.kernel.note
	if note == "" {
		note = "not started"
	}
	return fmt.Sprintf("kernel %s; host conntrack %s", note, ct)
}
