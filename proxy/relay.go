package proxy

import (
	"net"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/internal/sock"
)

// relay copies a logged-in session's bytes in both directions and owns
// the conn from the hand-off on. Each direction runs on a goroutine only
// while it has data: after parkAfter of quiet it parks (its socket waits
// in the server's poller, with no goroutine and no buffer) and the next
// data starts a new goroutine. At most one goroutine copies a direction at
// a time; the direction that ends last ends the session and cleans up.
// state and stopped are guarded by c.mu, which the table's Killer takes.
type relay struct {
	c       *conn
	state   [2]uint8    // dirRunning, dirParked, dirDone
	stopped [2]bool     // a direction told to end
	park    [2]parkSlot // poller registrations, fixed before the directions start
	tracker cmdTracker  // LOGOUT, for the line that ends the session
}

// start runs both directions on fresh goroutines; the caller's goroutine
// (whose stack grew through the TLS handshake) ends. A direction with
// nothing to copy parks, so an idle IDLE session holds no goroutine at all.
func (r *relay) start() {
	r.setupParking()
	r.c.mu.Lock()
	r.c.relay = r // a kill wakes parked directions from now on
	r.c.mu.Unlock()
	go r.runDir(toClient)
	go r.runDir(toUpstream)
}

// The two directions of the relay.
const (
	toUpstream = iota // client -> upstream
	toClient          // upstream -> client
)

const (
	dirRunning = iota
	dirParked
	dirDone
)

// setupParking registers the sockets that can wait in the poller: the
// upstream's when it is a plain socket, the client's when it is a plain
// TCP conn (a PROXY-wrapped one may buffer bytes of its own).
func (r *relay) setupParking() {
	p := r.c.srv.park.poller
	if p == nil {
		return
	}
	try := func(d int, c net.Conn) {
		if fd := sock.FD(c); fd >= 0 {
			r.park[d] = parkSlot{fd: fd, key: p.NewKey(), ok: true}
		}
	}
	try(toUpstream, r.c.raw) // no FD for a PROXY-wrapped conn
	try(toClient, r.c.up)
}

// parkSlot is a direction's registration in the poller.
type parkSlot struct {
	fd    int
	key   uint64
	ok    bool // the socket can park
	added bool // it is in the epoll set (from its first park on)
}

// runDir copies one direction until it parks or ends.
func (r *relay) runDir(d int) {
	parked := false
	defer func() {
		if p := recover(); p != nil {
			r.c.panicked(p)
			parked = false
		}
		if !parked {
			r.dirDone(d)
		}
	}()
	if d == toClient {
		parked = r.copyToClient()
	} else {
		parked = r.copyToUpstream()
	}
}

// parkDir arms d's socket and reports true if the direction may end its
// goroutine now. It refuses if the session was killed or the direction
// stopped (halted tells which), and if the poller cannot take the socket
// (then the direction stops trying and blocks as usual).
func (r *relay) parkDir(d int) bool {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	if r.c.killed || r.stopped[d] || !r.park[d].ok {
		return false
	}
	r.dirConn(d).SetReadDeadline(time.Time{}) // the idle deadline did its work
	r.state[d] = dirParked
	slot := &r.park[d]
	if err := r.c.srv.park.poller.Arm(slot.fd, slot.key, slot.added, func() { r.wake(d) }); err != nil {
		r.state[d] = dirRunning
		slot.ok = false
		return false
	}
	slot.added = true
	r.c.srv.park.parked.Add(1)
	return true
}

// wake runs a parked direction again (the poller saw data).
func (r *relay) wake(d int) {
	r.c.mu.Lock()
	if r.state[d] != dirParked {
		r.c.mu.Unlock()
		return
	}
	r.state[d] = dirRunning
	r.c.mu.Unlock()
	r.c.srv.park.parked.Add(-1)
	r.runDir(d)
}

// unparkLocked restarts a parked direction so it sees a kill or a stop;
// r.c.mu must be held.
func (r *relay) unparkLocked(d int) {
	if r.state[d] == dirParked && r.c.srv.park.poller.Disarm(r.park[d].key) {
		r.state[d] = dirRunning
		r.c.srv.park.parked.Add(-1)
		go r.runDir(d)
	}
}

// dirConn is the socket direction d reads from.
func (r *relay) dirConn(d int) net.Conn {
	if d == toClient {
		return r.c.up
	}
	return r.c.raw
}

// stopDir ends direction d: its reads fail from now on.
func (r *relay) stopDir(d int) {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	r.stopped[d] = true
	r.dirConn(d).SetReadDeadline(time.Unix(1, 0))
	r.unparkLocked(d)
}

// parkAfter is how long a direction must be quiet before it parks: short
// sessions (LOGIN, a few commands, LOGOUT) never pay for parking, idle ones
// give up their goroutine within this.
const parkAfter = 250 * time.Millisecond

// idleDeadline arms d's idle detector unless a kill or stop already set
// an expired deadline, which must stay.
func (r *relay) idleDeadline(d int) {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	if !r.c.killed && !r.stopped[d] {
		r.dirConn(d).SetReadDeadline(time.Now().Add(parkAfter))
	}
}

// halted reports whether d must end: the session was killed or the
// direction stopped. A timeout that is not that is only the idle detector.
func (r *relay) halted(d int) bool {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return r.c.killed || r.stopped[d]
}

// dirDone records that d ended; the second to end closes the session.
func (r *relay) dirDone(d int) {
	r.c.mu.Lock()
	if r.state[d] == dirDone { // a panic recovered after the direction had ended
		r.c.mu.Unlock()
		return
	}
	r.state[d] = dirDone
	last := r.state[toUpstream] == dirDone && r.state[toClient] == dirDone
	r.c.mu.Unlock()
	if !last {
		return
	}
	for _, slot := range r.park {
		if slot.added {
			r.c.srv.park.poller.Unregister(slot.fd, slot.key)
		}
	}
	r.end()
	r.c.cleanup()
}

// end closes a logged-in session and writes courier's line for
// how it ended.
func (r *relay) end() {
	how := courierlog.EndDisconnected
	switch r.c.entry.Killed() {
	case conntable.Timeout:
		r.c.finalWrite("* BYE Disconnected for inactivity.\r\n")
		how = courierlog.EndTimeout
	case conntable.Shutdown:
		r.c.finalWrite("* BYE Server shutting down.\r\n")
		how = courierlog.EndShutdown
	case conntable.Deleted:
		r.c.finalWrite("* BYE Connection closed by the administrator.\r\n")
	default:
		if r.tracker.loggedOut() {
			how = courierlog.EndLogout
		}
	}
	rx, tx := r.c.entry.Bytes()
	r.c.srv.log.SessionEnd(how, r.c.entry.User(), r.c.client.Remote, courierlog.Counts{
		Rcvd: rx, Sent: tx, Elapsed: time.Since(r.c.start),
	})
	r.c.closed()
}
