package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"imapgate/config"
	"imapgate/courierlog"
	"imapgate/kernel"
	"imapgate/limiter"
)

// openKernel starts the nftables path if [kernel] nftables is on, and the
// host conntrack watch. Without CAP_NET_ADMIN or nf_tables it logs one
// line and goes on: the userspace limits still apply.
func (a *app) openKernel(cfg *config.Config, lns []net.Listener) {
	if d := cfg.Kernel.ConntrackWatch.D(); d > 0 {
		a.conntrack.Check() // a first reading for the startup report
		go a.conntrack.Run(a.stop, d)
	}
	if !cfg.Kernel.NFTables {
		a.kernNote = "nftables off"
		return
	}
	var ports []uint16
	for _, ln := range lns {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok && !slices.Contains(ports, uint16(ta.Port)) {
			ports = append(ports, uint16(ta.Port))
		}
	}
	k, err := kernel.Open(kernel.Options{
		Ports: ports, DryRun: cfg.Kernel.DryRun, Escalation: cfg.Escalation(),
		Exempt: a.neverDropped, Bans: a.limiter.Bans, Log: a.log.Message,
	})
	if err != nil {
		a.kernNote = "nftables unavailable"
		a.log.Message(courierlog.Warning, fmt.Sprintf(
			"imapgate: warning: [kernel] nftables = true, but nftables cannot be used: %v; going on with the userspace limits only", err))
		return
	}
	a.kern = k
	a.kernNote = fmt.Sprintf("nftables table inet imapgate on ports %v", ports)
	if cfg.Kernel.DryRun {
		a.kernNote += " (dry run)"
	}
	go k.Run(a.stop, time.Second)
}

// neverDropped: exempt and allow-listed addresses never enter the sets.
func (a *app) neverDropped(addr netip.Addr) bool {
	p := a.limiter.Policy()
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
func (a *app) refused(addr netip.Addr, r limiter.Reason) {
	if a.kern != nil && r < limiter.NumReasons && escalating[r] {
		a.kern.Refused(addr, time.Now())
	}
}

// kernelStats feeds the metrics; ok is false when the path is off.
func (a *app) kernelStats() (kernel.Stats, bool) {
	if a.kern == nil {
		return kernel.Stats{}, false
	}
	return a.kern.Stats(), true
}

// kernelMembers lists the sets' elements for /bans (nil when off).
func (a *app) kernelMembers(now time.Time) []kernel.Member {
	if a.kern == nil {
		return nil
	}
	return a.kern.Members(now)
}

// unbanned takes a lifted ban out of the kernel at once.
func (a *app) unbanned() {
	if a.kern != nil {
		a.kern.Sync(time.Now())
	}
}

func conntrackNote(w *kernel.ConntrackWatch) string {
	if c, ok := w.Last(); ok {
		return c.String()
	}
	return "not loaded"
}
