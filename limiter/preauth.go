package limiter

import "context"

// limits returns the limits that apply to the ticket's connection: its
// override, or the ordinary limits in the tier it was admitted in.
func (t *Ticket) limits(p *Policy) Limits {
	lim, overridden := p.limitsFor(t.addr)
	if overridden || p.KnownGood.MinUsers <= 0 || !(t.goodIP || t.goodPrefix) {
		return *lim
	}
	return p.tiered(lim, t.goodIP, t.goodPrefix)
}

// NeedsWait reports whether the ticket must WaitPreauth before going on.
func (t *Ticket) NeedsWait() bool {
	return !t.none() && !t.exempt && t.counted&countedIP != 0 && t.counted&countedPreauth == 0
}

// WaitPreauth blocks until the address has a free not-logged-in slot, or
// ctx ends (the caller's handshake deadline or a kill): then the decision
// is a max_preauth_per_ip refusal.
func (t *Ticket) WaitPreauth(ctx context.Context) Decision {
	l := t.l
	s := &l.ips[l.shardOf(t.k)]
	var lim Limits
	for {
		lim = t.limits(l.policy())
		s.Lock()
		c := s.m[t.k]
		if lim.MaxPreauthPerIP <= 0 || int(c.preauth) < lim.MaxPreauthPerIP {
			c.preauth++
			s.m[t.k] = c
			t.counted |= countedPreauth
			s.Unlock()
			return Decision{Addr: t.addr, Prefix: t.prefix}
		}
		ch := s.freed[t.k]
		if ch == nil {
			ch = make(chan struct{})
			s.freed[t.k] = ch
		}
		s.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return t.preauthRefusal(lim)
		}
	}
}

// CutOff is the refusal WaitPreauth returns when its wait is cut off, for
// a connection cut off before it waited (a silent client's first record
// never came): a max_preauth_per_ip refusal, no slot taken.
func (t *Ticket) CutOff() Decision {
	return t.preauthRefusal(t.limits(t.l.policy()))
}

func (t *Ticket) preauthRefusal(lim Limits) Decision {
	p := t.l.policy()
	return Decision{Refused: true, Reason: MaxPreauthPerIP, Action: p.Action[MaxPreauthPerIP],
		Limit: lim.MaxPreauthPerIP, Addr: t.addr, Prefix: t.prefix}
}

// releasePreauth gives back the not-logged-in slot and wakes waiters; the
// shard lock must be held.
func (t *Ticket) releasePreauth(s *ipShard, c *ipCount) {
	if t.counted&countedPreauth == 0 {
		return
	}
	t.counted &^= countedPreauth
	c.preauth--
	if ch := s.freed[t.k]; ch != nil {
		close(ch)
		delete(s.freed, t.k)
	}
}

// LoggedIn moves the connection out of the not-logged-in count.
func (t *Ticket) LoggedIn() {
	if t.none() || t.exempt || t.counted&countedIP == 0 {
		return
	}
	s := &t.l.ips[t.l.shardOf(t.k)]
	s.Lock()
	c := s.m[t.k]
	t.releasePreauth(s, &c)
	s.m[t.k] = c
	s.Unlock()
}
