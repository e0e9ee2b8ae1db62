package kernel

import (
	"maps"
	"net/netip"
	"time"
)

// Carried is what a Kernel hands on to the one that replaces it when a
// reload changes [kernel] (Handover, then Carry), or that the gateway
// keeps while the nftables path is off or unavailable: the escalations in
// the sets and those queued for the next Sync; the escalator's state per
// address and prefix (refusal window, level, last escalation, drop end,
// and a prefix's dropped addresses); and the known-good addresses (Good). Without it a flooder at level 3 would start again at level 1
// after any such reload, and a known-good address would be dropped with
// its prefix until it logged in again. Bans are not in it: they come back
// from Options.Bans at the first Sync. The zero value carries nothing.
type Carried struct {
	members []Member
	pending []escalated
	m       map[netip.Addr]*escState
	pm      map[netip.Prefix]*prefixState
	good    map[netip.Addr]time.Time
	dryRun  bool
	// The counters of Stats so far (additions by reason, dropped packets
	// and bytes, table re-creations): the next Kernel goes on from them,
	// so the metrics' totals never start again at a reload.
	added     map[string]uint64
	dropped   [2]uint64
	recreated uint64
}

// Handover returns what k hands on, and leaves k's escalator empty and
// its queue drained. Call it once k is no longer the Kernel refusals are
// reported to, after Close (so that no Sync takes from the queue any
// more); a refusal still reported to k afterwards is counted there and
// lost.
func (k *Kernel) Handover(now time.Time) Carried {
	c := Carried{members: k.Members(now), dryRun: k.o.DryRun}
	k.mu.Lock()
	c.added, c.recreated = maps.Clone(k.added), k.recr
	c.dropped = [2]uint64{k.base[0] + k.seen[0], k.base[1] + k.seen[1]} // read at Close, before the table went
	k.mu.Unlock()
	for {
		select {
		case e := <-k.pending:
			c.pending = append(c.pending, e)
			continue
		default:
		}
		break
	}
	k.goodMu.Lock()
	c.good, k.good = k.good, make(map[netip.Addr]time.Time)
	k.goodMu.Unlock()
	e := &k.esc
	e.mu.Lock()
	defer e.mu.Unlock()
	c.m, c.pm = e.m, e.pm
	e.m, e.pm = make(map[netip.Addr]*escState), make(map[netip.Prefix]*prefixState)
	return c
}

// Carry puts c in force in k, a Kernel just opened (before its Run): the
// escalations in c's sets go into k's until their own end, those queued
// are queued again (the next Sync adds them, with their own log line),
// and the escalator's state is k's, so the next escalation of a flooder
// goes on from its level; the known-good addresses enter the keep sets at
// the next Sync, until their known-good time ends. Entries the new
// escalation settings count as forgotten (idle: no refusal for a window,
// no drop in force, quiet for 4 × Max) are left out, and at most
// Options.MaxTracked of each kind are taken. c may be carried again: Carry
// copies it (Good's entries aside, which are values).
//
// What is carried stays true under changed [kernel.escalation] settings,
// so all of it is carried whatever they are: a refusal window is "n
// refusals since start", a fact that the new Window ends (a shorter one at
// the next refusal) and the new Refusals judge; a level and the last
// escalation are how often and when the address escalated, facts from
// which the new First and Max give the next drop's length and the new Max
// the quiet spell that forgives; a drop end is the end of a drop in
// force, which keeps its own end as its element does (the new durations
// apply from the next escalation). Prefixes are keyed as PrefixOf gave
// them then: after a change of limits.ipv4_prefix or ipv6_prefix, the old
// ones age out as they would have in the old Kernel.
//
// From a dry run into a Kernel that is not one, nothing was ever in the
// sets: the members and queued escalations are not carried, and the drop
// ends and a prefix's dropped addresses are cleared (a flooder's next
// burst escalates at once, at the level its dry run reached). Into a dry
// run, the escalations are carried as "would drop" entries.
func (k *Kernel) Carry(c Carried, now time.Time) {
	wasDry := c.dryRun && !k.o.DryRun
	k.mu.Lock()
	for r, n := range c.added {
		k.added[r] += n
	}
	k.base[0] += c.dropped[0]
	k.base[1] += c.dropped[1]
	k.recr += c.recreated
	for _, m := range c.members {
		switch {
		case m.DryRun || !m.Until.After(now):
		case m.Reason == ReasonBan:
			if k.carriedBans == nil {
				k.carriedBans = make(map[netip.Prefix]time.Time)
			}
			k.carriedBans[m.Prefix] = m.Until
		default:
			k.put(m.Prefix, m.Until, now, m.Reason, "kept across a reload", true)
		}
	}
	k.mu.Unlock()
	for _, e := range c.pending {
		if wasDry {
			break
		}
		select {
		case k.pending <- e:
		default: // full: as in refused
		}
	}
	if len(c.pending) > 0 && !wasDry {
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
	k.esc.carry(c, wasDry, now)
	for a, until := range c.good {
		if until.After(now) {
			k.Good(a, until)
		}
	}
}

// carry takes c's state as described at Kernel.Carry.
func (e *escalator) carry(c Carried, wasDry bool, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for a, s := range c.m {
		if _, ok := e.m[a]; ok || len(e.m) >= e.max || s.idle(e.cfg, now) {
			continue
		}
		cp := *s
		if wasDry {
			cp.until = time.Time{}
		}
		e.m[a] = &cp
	}
	for p, s := range c.pm {
		if _, ok := e.pm[p]; ok || len(e.pm) >= e.max || (s.idle(e.cfg, now) && len(s.addrs) == 0) {
			continue
		}
		cp := *s
		cp.addrs = maps.Clone(s.addrs)
		if wasDry {
			cp.until = time.Time{}
			clear(cp.addrs)
		}
		e.pm[p] = &cp
	}
}
