package limiter

import "strings"

// ReserveUser takes a place for user from this address before the login is
// forwarded (max_per_user_ip); CommitUser(false) gives it back if the login
// fails. User names are compared case-insensitively.
func (t *Ticket) ReserveUser(user string) Decision {
	if t.none() || t.exempt || t.hasUser {
		return Decision{}
	}
	if t.l.cl.s != nil {
		return t.reserveUserCluster(user)
	}
	return t.reserveUser(user, false)
}

// reserveUser counts user on this node; with book, without checking the
// limit (the shared state checked it).
func (t *Ticket) reserveUser(user string, book bool) Decision {
	d := Decision{Addr: t.addr, Prefix: t.prefix, User: user}
	p := t.l.policy()
	lim, _ := p.limitsFor(t.addr)
	k := userKey{strings.ToLower(user), t.addr}
	s := &t.l.users[t.l.shardOf(t.k)]
	s.Lock()
	defer s.Unlock()
	if n := s.m[k]; !book && lim.MaxPerUserIP > 0 && int(n) >= lim.MaxPerUserIP && t.l.refuse(&d, p, MaxPerUserIP, lim.MaxPerUserIP) {
		return d
	}
	s.m[k]++
	t.user, t.hasUser = k, true
	return d
}

// CommitUser keeps the reserved place if ok, else gives it back.
func (t *Ticket) CommitUser(ok bool) {
	if t.none() {
		return
	}
	if t.l.cl.s != nil {
		t.commitUserCluster(ok)
		return
	}
	if !ok {
		t.releaseUser()
	}
}

func (t *Ticket) releaseUser() {
	if t.none() {
		return
	}
	if t.l.cl.s != nil {
		t.commitUserCluster(false)
		return
	}
	t.releaseUserLocal()
}

func (t *Ticket) releaseUserLocal() {
	if !t.hasUser {
		return
	}
	s := &t.l.users[t.l.shardOf(t.k)]
	s.Lock()
	if s.m[t.user]--; s.m[t.user] <= 0 {
		delete(s.m, t.user)
	}
	s.Unlock()
	t.hasUser = false
}
