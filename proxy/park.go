package proxy

import (
	"context"
	"sync"
	"time"

	"imapgate/conntable"
	"imapgate/internal/sock"
)

// parkedConn is a connection admitted in the accept loop that has not yet
// sent its first whole TLS record (Linux, with the Poller: serveRaw). It is
// a bare descriptor armed in the poller, with its table entry and limiter
// ticket: no goroutine, no net.Conn, no registration with Go's netpoller.
// A silent flood of ten thousand connections costs ten thousand of these
// instead of ten thousand goroutines that all wake at once when the silent
// timeout kills them together (README, "Floods and the kernel").
//
// Ownership: exactly one of the poller's ready callback and the table's
// Killer owns the descriptor, decided by who takes the wait: the loop
// (ready runs) or Poller.Disarm (kill drops it, in the killing goroutine,
// with no goroutine of its own). mu orders arming against kill. Once the
// record is whole, ready makes the net.Conn and runs the session in its
// own goroutine; from then on kill forwards to the conn's Killer.
type parkedConn struct {
	srv   *Server
	fd    int
	key   uint64
	a     admission
	entry *conntable.Entry
	start time.Time
	lowat int // the SO_RCVLOWAT set, 0 for the default
	wakes int // ready calls without a whole record

	mu sync.Mutex
	c  *conn // set at the hand-off
}

// maxParkedWakes bounds the ready calls that find no whole record (a
// record larger than the kernel lets SO_RCVLOWAT wait for): past it the
// connection goes on in a goroutine, as without the poller.
const maxParkedWakes = 8

// parkNew takes a raw socket the accept loop admitted (a, counted by
// startSession): its table entry, then a wait in the poller. A refusal with
// bye, or a ticket with shared limits still to confirm, goes on in a
// goroutine at once (both need one).
func (s *Server) parkNew(fd int, a admission) {
	if a.decision.Refused || a.ticket.Pending() {
		s.goServe(fd, a)
		return
	}
	p := &parkedConn{srv: s, fd: fd, key: s.park.poller.NewKey(), a: a, start: time.Now()}
	entry, err := s.table.Insert(a.client.Remote, a.client.Local, p.kill)
	if err != nil {
		s.events.Refused("table_full", false)
		s.tracker.RefusedFrom(a.client.Remote.Addr())
		sock.ResetFD(fd) // as every refusal before TLS: conntrack's CLOSE, 10 s
		a.ticket.Release()
		s.life.sessions.Done()
		return
	}
	p.entry = entry
	s.park.silent.Add(1)
	p.arm(false)
}

// goServe makes fd a net.Conn and serves it in a new goroutine.
func (s *Server) goServe(fd int, a admission) {
	raw, err := sock.ConnFD(fd)
	if err != nil {
		a.ticket.Release()
		s.life.sessions.Done()
		return
	}
	go s.serveConn(raw, a)
}

// arm waits in the poller for the client's bytes, unless the entry was
// killed meanwhile: then, or if the poller cannot take the socket, it drops
// the connection.
func (p *parkedConn) arm(added bool) {
	p.mu.Lock()
	if p.entry.Killed() != conntable.NotKilled {
		p.mu.Unlock()
		p.drop()
		return
	}
	err := p.srv.park.poller.Arm(p.fd, p.key, added, p.ready)
	p.mu.Unlock()
	if err != nil {
		p.drop()
	}
}

// kill is the entry's Killer. While the connection waits in the poller it
// takes the wait and drops the connection here; after the hand-off it
// kills the conn. In between (ready is running), ready sees the kill.
func (p *parkedConn) kill(r conntable.Reason) {
	p.mu.Lock()
	mine := p.srv.park.poller.Disarm(p.key)
	c := p.c
	p.mu.Unlock()
	switch {
	case mine:
		p.drop()
	case c != nil:
		c.kill(r)
	}
}

// ready runs on its own goroutine when the socket is readable or hung up.
// It owns the connection: a whole first record starts the session here; a
// partial one waits again, woken only once the rest is queued (SO_RCVLOWAT);
// a close or reset ends it.
func (p *parkedConn) ready() {
	if p.entry.Killed() != conntable.NotKilled {
		p.drop()
		return
	}
	n, need := sock.FirstRecordFD(p.fd)
	if n < 0 && p.wakes < maxParkedWakes {
		p.wakes++
		if need != p.lowat && sock.SetRcvLowat(p.fd, need) == nil {
			p.lowat = need
		}
		p.arm(true)
		return
	}
	if n == 0 {
		p.drop()
		return
	}
	if p.lowat > 1 {
		sock.SetRcvLowat(p.fd, 1)
	}
	s := p.srv
	s.park.silent.Add(-1)
	// Out of the epoll set before ConnFD's dup: a registration lives as
	// long as the file, not the descriptor.
	s.park.poller.Unregister(p.fd, p.key)
	raw, err := sock.ConnFD(p.fd)
	if err != nil {
		p.release(false)
		return
	}
	a := p.a
	a.parked, a.first = p.entry, n // -1: the handshake's framing decides
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{srv: s, raw: raw, start: p.start, cancel: cancel}
	p.mu.Lock()
	p.c = c
	p.mu.Unlock()
	if r := p.entry.Killed(); r != conntable.NotKilled {
		c.kill(r)
	}
	if r := c.serve(ctx, a); r != nil {
		r.start()
	}
}

// drop ends a connection that never got a goroutine: the descriptor is
// closed here (never registered elsewhere, so a close removes it from the
// epoll set too), as the goroutine path would end it (admit's wait).
func (p *parkedConn) drop() {
	p.srv.park.silent.Add(-1)
	switch p.entry.Killed() {
	case conntable.EarlyDrop, conntable.Timeout:
		// A silent flood's connection, dropped or timed out: reset, as a
		// refusal is, so conntrack forgets it in 10 s, not 120.
		sock.ResetFD(p.fd)
	default:
		sock.CloseFD(p.fd)
	}
	p.release(true)
}

// release reports the end of a silent connection as admit does, gives the
// ticket back, and removes the entry.
func (p *parkedConn) release(report bool) {
	s, t := p.srv, p.a.ticket
	if r := p.entry.Killed(); report && r != conntable.NotKilled {
		switch {
		case r == conntable.EarlyDrop:
			// The table's refusal, counted and logged there (its early
			// drop line), also for a connection that waited for a
			// pre-login slot: not one more of that limit's.
		case t.NeedsWait():
			s.report(t.CutOff(), false) // cut off while silent, as a cut-off wait is
		case r == conntable.Timeout:
			s.handshakeTimedOut(p.a.client.Remote.Addr())
		}
	}
	t.Release()
	s.table.Remove(p.entry)
	s.life.sessions.Done()
}

// ParkedSilent is the number of connections waiting for their client's
// first TLS record in the poller, without a goroutine.
func (s *Server) ParkedSilent() int { return int(s.park.silent.Load()) }
