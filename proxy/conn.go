package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/limiter"
	"imapgate/upstream"
)

// conn is one client connection from accept to close: who the client is,
// its table entry and limiter ticket, its sockets, and how it ends. It has
// one owner at a time, and ownership passes by handing over a value:
// serveConn's goroutine owns it until login (the loginPhase borrows it),
// then serve returns the relay that owns it, and of the relay's two
// directions the one that ends last cleans up. The fields under mu are
// also touched by the table's Killer, from another goroutine.
type conn struct {
	srv    *Server
	client upstream.Client
	raw    net.Conn // as accepted; PROXY-aware if the listener is
	tc     *tls.Conn
	entry  *conntable.Entry
	ticket *limiter.Ticket // nil (holds nothing) without a limiter
	start  time.Time
	// verdict: with a cluster, the shared limits' verdict still to come
	// for the ticket, which nothing may touch until it is received
	// (settleAfterTLS; cleanup at the latest); admitted is the accept
	// loop's decision it updates.
	verdict  <-chan verdict
	admitted limiter.Decision
	// writeFailed: a write to the client failed, possibly in the middle of
	// a TLS record (a kill's deadline), and the record sequence has moved
	// on: any later record, close_notify included, would reach the client
	// as "bad record MAC". Set by whichever goroutine writes.
	writeFailed atomic.Bool

	mu     sync.Mutex
	up     net.Conn
	killed bool
	cancel context.CancelFunc // the login phase's context; noCancel once it is gone
	relay  *relay             // set at the hand-off, so that a kill can wake parked directions
}

// kill is the table's Killer: it interrupts whatever I/O the connection is
// blocked in. Its owner notices and ends the session.
func (c *conn) kill(conntable.Reason) {
	c.mu.Lock()
	c.killed = true
	past := time.Unix(1, 0)
	c.raw.SetDeadline(past)
	if c.up != nil {
		c.up.SetDeadline(past)
	}
	if r := c.relay; r != nil {
		// Parked relay directions have no goroutine to interrupt: restart
		// them so they read, fail and end the session.
		r.unparkLocked(toUpstream)
		r.unparkLocked(toClient)
	}
	cancel := c.cancel
	c.mu.Unlock()
	cancel()
}

// panicked handles a panic recovered in one of the connection's
// goroutines, as net/http does for a handler: a bug costs this session,
// never the process and the other sessions. It logs the panic with the
// connection's id and stack, counts it, and kills the connection so that
// its other goroutine (if any) ends too; the owner then cleans up as usual.
func (c *conn) panicked(r any) {
	id := uint64(0)
	if c.entry != nil {
		id = c.entry.ID()
	}
	c.srv.log.Message(courierlog.Crit, fmt.Sprintf("panic in session id=%d, ip=[%s]: %v\n%s",
		id, courierlog.Addr(c.client.Remote.Addr()), r, debug.Stack()))
	c.srv.events.Panic()
	c.kill(conntable.NotKilled)
}

// cleanup releases everything the connection holds, once, by its owner.
func (c *conn) cleanup() {
	c.endContext()
	c.raw.Close()
	c.mu.Lock()
	if c.up != nil {
		c.up.Close()
	}
	c.mu.Unlock()
	if c.verdict != nil {
		<-c.verdict // the session ended before settleAfterTLS
	}
	c.ticket.Release()
	if c.entry != nil {
		c.srv.table.Remove(c.entry)
	}
	c.srv.life.sessions.Done()
}

// endContext cancels the login phase's context and lets it go. A logged-in
// session does not need it, and an idle one would otherwise keep it for
// hours, with the children map the upstream dial's timeout left in it (a
// few hundred bytes per session).
func (c *conn) endContext() {
	c.mu.Lock()
	cancel := c.cancel
	c.cancel = noCancel
	c.mu.Unlock()
	cancel()
}

func noCancel() {}

// setUp publishes the upstream conn so kill can interrupt it.
func (c *conn) setUp(up net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.up = up
	return !c.killed
}

// upDeadline sets the upstream read deadline unless the connection was
// killed (a kill's deadline in the past must win).
func (c *conn) upDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.killed {
		c.up.SetReadDeadline(t)
	}
}

func (c *conn) writeClient(b []byte) error {
	n, err := c.tc.Write(b)
	c.entry.Sent(n)
	if err != nil {
		c.writeFailed.Store(true)
	}
	return err
}

// finalWrite sends a last line to a client whose deadlines a kill may have
// set in the past.
func (c *conn) finalWrite(line string) {
	if c.tc == nil {
		return
	}
	c.raw.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.writeClient([]byte(line))
}

// clientReader reads the client's side through TLS, counting bytes.
type clientReader struct{ c *conn }

func (r clientReader) Read(p []byte) (int, error) {
	n, err := r.c.tc.Read(p)
	r.c.entry.Received(n)
	return n, err
}
