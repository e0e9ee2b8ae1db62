package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/internal/sock"
	"imapgate/internal/throttle"
	"imapgate/limiter"
	"imapgate/upstream"
)

// admission is a limiter decision made in the accept loop (serveRaw), handed
// to the connection's goroutine by value; the zero admission means none was
// made there.
type admission struct {
	client   upstream.Client
	ticket   *limiter.Ticket
	decision limiter.Decision
	decided  bool
	// parked: the connection waited in the poller (park.go) with its table
	// entry taken; first is the bytes its client's first record brought.
	parked *conntable.Entry
	first  int
}

// serveConn owns raw from here on, as tcpproxy's HandleConn does: it runs
// the connection up to login, then hands it to the relay.
func (s *Server) serveConn(raw net.Conn, a admission) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{srv: s, raw: raw, start: time.Now(), cancel: cancel}
	if r := c.serve(ctx, a); r != nil {
		r.start()
	}
}

// growStack grows the calling goroutine's stack, while it is still
// shallow, to the size the TLS handshake and login will reach anyway
// (handshake calls it, once the client has sent a whole record: a silent
// connection keeps a small stack). Grown later, deep inside crypto/tls,
// each doubling copies and adjusts every frame on the way: that was 3.5 %
// of a session's CPU. The handshake reaches a 16 KiB stack (with an 8 KiB
// one, profiles still showed 2.6 % in growth), so this costs no memory that
// the session would not take anyway; the stack goes with the goroutine at
// login.
//
//go:noinline
func growStack() {
	var pad [stackPad]byte
	keepStack(pad[:])
}

const stackPad = 14 << 10

//go:noinline
func keepStack([]byte) {}

// Test hooks, nil outside tests: called with each command name before
// login and with each chunk the client sends after login, so a test can
// make a session panic on purpose.
var (
	testHookCommand func(name string)
	testHookRelay   func(b []byte)
)

// serve runs the connection from admission to login. It returns the relay
// that owns the connection from then on, or nil when the connection has
// ended here and been cleaned up.
func (c *conn) serve(ctx context.Context, a admission) (r *relay) {
	defer func() {
		// recover works only when called by the deferred function itself.
		if p := recover(); p != nil {
			c.panicked(p)
			r = nil
		}
		if r == nil {
			c.cleanup()
		}
	}()
	if !c.admit(ctx, a) || !c.handshake() || !c.settleAfterTLS(ctx) {
		return nil
	}
	// Keepalive only for sessions that got this far: the listener leaves
	// it off so refused connections cost no setsockopt calls.
	if kc, ok := c.raw.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		kc.SetKeepAliveConfig(sock.KeepAlive)
	}
	c.entry.SetState(conntable.Preauth)
	c.srv.log.Connection(c.client.Remote)
	lp := newLoginPhase(c, ctx)
	defer lp.release()
	switch lp.run() {
	case loggedIn:
		return lp.handOff()
	case loggedOut:
		rx, tx := c.entry.Bytes()
		c.srv.log.LogoutPreauth(c.client.Remote, courierlog.Counts{Rcvd: rx, Sent: tx})
		c.closed()
	default:
		c.endPreauth()
	}
	return nil
}

// resetOnClose makes the close of a connection refused before TLS a
// reset, as the accept loop's refusals are (sock.Acceptor): conntrack
// forgets it in 10 s instead of 120. Only a client's own connection: a
// balancer's (PROXY protocol) is closed as usual.
func (c *conn) resetOnClose() {
	if tc, ok := c.raw.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

// admit takes the limiter's decision (made here unless the accept loop
// made it) and the connection's table entry, and waits for a pre-login
// slot if the decision says so. It reports whether the connection may go
// on to TLS.
func (c *conn) admit(ctx context.Context, a admission) bool {
	s := c.srv
	if a.parked != nil {
		// Admitted, confirmed and in the table already: its first record
		// is whole.
		c.client, c.ticket, c.entry = a.client, a.ticket, a.parked
		return c.preauthSlot(ctx, a.first, nil)
	}
	if !a.decided {
		// With a proxyproto listener this reads the PROXY header, bounded
		// by its ReadHeaderTimeout, here in the connection's goroutine.
		cl := upstream.Client{Remote: sock.AddrPort(c.raw.RemoteAddr()), Local: sock.AddrPort(c.raw.LocalAddr())}
		if !cl.Remote.IsValid() {
			return false
		}
		var keep bool
		if a, keep = s.decide(cl); !keep {
			c.resetOnClose()
			return false
		}
	}
	c.client, c.ticket = a.client, a.ticket // cleanup releases the ticket
	entry, err := s.table.Insert(c.client.Remote, c.client.Local, c.kill)
	if err != nil {
		s.events.Refused("table_full", false)
		s.tracker.RefusedFrom(c.client.Remote.Addr())
		c.resetOnClose() // as every refusal before TLS: conntrack's CLOSE, 10 s
		return false
	}
	c.entry = entry // cleanup removes it
	if a.decision.Refused {
		c.refuseWithBye(a.decision)
		return false
	}
	// With a cluster, the shared limits are one Redis call (never in the
	// accept loop). It runs while the client builds and sends its
	// ClientHello and, once that is here, while the TLS handshake runs:
	// the session waits for the verdict only once TLS is up
	// (settleAfterTLS), which hides the round trip whole. A refusal that
	// comes meanwhile cuts the handshake short; one that comes later is
	// a reset (or a BYE) before the greeting. Such a refusal has cost a
	// handshake's computation, so their number is bounded (late): past
	// it, and for a ticket that waits for a pre-login slot (the wait
	// touches the ticket), the verdict is taken before TLS, as it was.
	slotWait := c.ticket.NeedsWait() // read before Confirm may change the ticket
	afterTLS := !slotWait && s.late.allowed(time.Now())
	// From here the verdict is c's: cleanup receives it if nothing else
	// does (a panic included), before it releases the ticket.
	c.verdict, c.admitted = c.confirm(ctx, a.decision), a.decision
	// Until its client's first TLS record is whole the connection is
	// silent, and waits here: with a shallow stack (a flood of thousands
	// costs the collector little to scan), before any TLS state, and
	// before a pre-login slot, so that waiting for one does not hide from
	// the table that nothing came (an honest client's ClientHello is here
	// at once; a silent flood's never comes, and goes at the silent
	// timeout, or first when the table is full).
	n, err := sock.WaitFirstRecord(c.raw)
	if c.verdict != nil && err == nil && n != 0 && afterTLS { // n < 0: not waited for (portable build)
		if n > 0 {
			c.entry.Progress(n, true)
		}
		return true
	}
	if c.verdict != nil {
		d, ok := c.takeVerdict()
		if !ok {
			return false
		}
		if !d.Refused || d.Action != limiter.Bye {
			s.report(d, false) // a refusal with bye is reported after TLS
		}
		switch {
		case d.Refused && d.Action != limiter.Bye:
			c.resetOnClose()
			return false
		case d.Refused:
			c.refuseWithBye(d)
			return false
		}
	}
	return c.preauthSlot(ctx, n, err)
}

// settleAfterTLS receives the shared verdict admit left in c.verdict, now
// that TLS is up, and acts on it as admit would have: a refusal that
// closes resets the connection, one with bye is told inside TLS, and a
// ticket that fell back to local limits takes its pre-login slot. It
// reports whether the session goes on.
func (c *conn) settleAfterTLS(ctx context.Context) bool {
	if c.verdict == nil {
		return true
	}
	s := c.srv
	d, ok := c.takeVerdict()
	switch {
	case !ok:
		return false
	case d.Refused && d.Action != limiter.Bye:
		s.report(d, false)
		s.late.refused(time.Now())
		c.resetOnClose()
		return false
	case d.Refused:
		s.report(d, true)
		c.sayBye(d) // told after TLS anyway: no handshake more than before
		return false
	}
	s.report(d, false)
	if c.ticket.NeedsWait() {
		if d := c.ticket.WaitPreauth(ctx); d.Refused {
			s.report(d, false)
			return false
		}
	}
	return true
}

// settleFailedHandshake receives the verdict of a session whose handshake
// failed with it still out, and reports it (the client hears nothing).
// It reports whether the verdict was a refusal: then the handshake was
// most likely cut short by it (confirm), and is no TLS failure.
func (c *conn) settleFailedHandshake() (refused bool) {
	d, ok := c.takeVerdict()
	if !ok {
		return true // a panic, logged as such
	}
	c.srv.report(d, false)
	if d.Refused {
		if d.Action != limiter.Bye {
			c.srv.late.refused(time.Now())
		}
		c.resetOnClose()
	}
	return d.Refused
}

// takeVerdict waits for c.verdict (recording the wait) and returns its
// decision, with what decide reported taken out; ok is false if Confirm
// panicked.
func (c *conn) takeVerdict() (d limiter.Decision, ok bool) {
	heard := time.Now()
	v := <-c.verdict
	c.verdict = nil
	c.srv.events.SharedVerdictWait(time.Since(heard))
	if v.panicked {
		return d, false
	}
	d = v.d
	d.WouldRefuse &^= c.admitted.WouldRefuse // decide reported those
	return d, true
}

// lateRefusals counts the shared refusals that close, and came once a
// handshake had run (each cost its computation, about 0.2 ms here, where
// before TLS it would have cost none; a bye refusal runs the handshake
// either way): at most lateRefusalBurst a second; past that, admissions
// take the verdict before TLS for the rest of the second. The refusals
// of a flood from one address come from the accept loop's memory of the
// first (the over-limit cache), so this is reached only by many
// addresses refused by Redis at once.
type lateRefusals struct {
	t            *throttle.Throttle
	blockedUntil atomic.Int64 // unix ns
}

const lateRefusalBurst = 20

func (l *lateRefusals) allowed(now time.Time) bool { return now.UnixNano() >= l.blockedUntil.Load() }

func (l *lateRefusals) refused(now time.Time) {
	if ok, _ := l.t.Allow(now); !ok {
		l.blockedUntil.Store(now.Add(time.Second).UnixNano())
	}
}

// verdict is what confirm's worker hands back.
type verdict struct {
	d        limiter.Decision
	panicked bool // Confirm panicked: the session is killed and logged
}

// confirm asks the shared limits about a ticket Admit left pending
// (Ticket.Confirm, one Redis call bounded by the cluster timeout) on a
// verdict worker (s.verdicts), and returns where its verdict will come;
// nil when there is nothing to ask. A refusal that closes before TLS cuts the wait
// for the first record short, so a silent client is not kept for it. The
// caller must receive the verdict before the ticket is touched again.
func (c *conn) confirm(ctx context.Context, d limiter.Decision) <-chan verdict {
	if !c.ticket.Pending() {
		return nil
	}
	ch := make(chan verdict, 1)
	c.srv.verdicts.run(func() {
		defer func() {
			if p := recover(); p != nil {
				c.panicked(p)
				ch <- verdict{panicked: true}
			}
		}()
		d := c.ticket.Confirm(ctx, time.Now(), d)
		if d.Refused && d.Action != limiter.Bye {
			c.raw.SetReadDeadline(time.Unix(1, 0))
		}
		ch <- verdict{d: d}
	})
	return ch
}

// preauthSlot goes on from the client's first record (n bytes queued, 0 if
// the client closed first, -1 if not waited for; err if the wait was cut
// off): it marks the entry heard and waits for a pre-login slot if the
// ticket needs one. It reports whether the connection may go on to TLS.
func (c *conn) preauthSlot(ctx context.Context, n int, err error) bool {
	s, entry := c.srv, c.entry
	switch {
	case err == nil && n == 0:
		return false // the client closed before a whole record
	case n > 0:
		entry.Progress(n, true)
	}
	if err != nil && !c.ticket.NeedsWait() {
		if entry.Killed() == conntable.Timeout {
			s.handshakeTimedOut(c.client.Remote.Addr())
		}
		return false
	}
	if c.ticket.NeedsWait() {
		var d limiter.Decision
		if err == nil {
			d = c.ticket.WaitPreauth(ctx)
		} else {
			d = c.ticket.CutOff() // cut off while silent, as a cut-off wait is
		}
		if d.Refused {
			// Cut off: the handshake timeout, or a kill. An early drop is
			// the table's refusal, counted and logged there: not one more
			// of the pre-login limit's.
			if entry.Killed() != conntable.EarlyDrop {
				s.report(d, false)
			}
			return false
		}
		entry.SetState(conntable.Handshake) // the handshake's own clock starts now
	}
	return true
}

// handshake runs the client's TLS handshake, bounded by the table's
// handshake timeout (a kill), and learns what the client negotiated.
func (c *conn) handshake() bool {
	growStack()
	pc := &progressConn{Conn: c.raw, entry: c.entry}
	c.tc = tls.Server(pc, c.srv.tlsConfig)
	start := time.Now()
	// Handshake, not HandshakeContext: the table's Killer interrupts it by
	// deadline, which costs no goroutine per connection.
	err := c.tc.Handshake()
	pc.done = true
	if err != nil && c.verdict != nil && c.settleFailedHandshake() {
		return false // cut short by a shared refusal, reported
	}
	c.srv.events.Handshake(time.Since(start), err)
	if err != nil {
		if c.entry.Killed() == conntable.Timeout {
			c.srv.handshakeTimedOut(c.client.Remote.Addr())
		}
		return false
	}
	cs := c.tc.ConnectionState()
	c.client.TLSVersion, c.client.CipherSuite, c.client.ServerName = cs.Version, cs.CipherSuite, cs.ServerName
	return true
}
