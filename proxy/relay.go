package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/internal/sock"
)

// After login the proxy only copies bytes, and an idle session costs
// almost nothing: each direction runs on its own goroutine only while it
// has data; after parkAfter of quiet it parks (its socket waits in the
// server's poller, no goroutine, no buffer) and the next data starts a new
// goroutine. Buffers are pooled and borrowed per read: the upstream side
// waits for readability before it borrows one, reads 16 KiB (one TLS
// record) or 64 KiB while a FETCH streams; the client side reads through a
// small buffer, borrowing a large one only while an APPEND streams.

const (
	bigBuf   = 16 << 10 // one full TLS record of plaintext
	smallBuf = 1 << 10
	bulkBuf  = 64 << 10 // upstream reads while a FETCH streams
)

var (
	bigPool  = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}
	bulkPool = sync.Pool{New: func() any { b := make([]byte, bulkBuf); return &b }}
)

// relay copies in both directions until both are done, then logs the end of
// the session in courier's words.
func (ss *session) relay() {
	// Hand over what the login-phase readers already buffered: commands the
	// client pipelined after LOGIN (held until the tagged OK) go upstream,
	// anything the upstream sent after its OK goes to the client.
	if n := ss.cr.Buffered(); n > 0 {
		b, _ := ss.cr.Peek(n)
		ss.tracker.scanClient(b)
		if _, err := ss.up.Write(b); err != nil {
			ss.endEstablished()
			return
		}
	}
	if n := ss.ur.Buffered(); n > 0 {
		b, _ := ss.ur.Peek(n)
		ss.tracker.scanServer(b)
		if ss.writeClient(b) != nil {
			ss.endEstablished()
			return
		}
	}
	putReader(ss.cr)
	putReader(ss.ur)
	ss.cr, ss.ur = nil, nil
	// The login phase's scratch space is not needed while the session
	// idles for hours.
	ss.cmd, ss.out, ss.last = nil, nil, nil

	// Both directions run on fresh goroutines, and this one (whose stack
	// grew through the TLS handshake) ends. A direction with nothing to copy
	// parks in the server's poller and its goroutine ends too, so an idle
	// IDLE session holds no goroutine at all. The direction that finishes
	// last closes the session.
	ss.handedOff = true
	ss.setupParking()
	go ss.runDir(toClient)
	go ss.runDir(toUpstream)
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
func (ss *session) setupParking() {
	p := ss.srv.poller
	if p == nil {
		return
	}
	try := func(d int, c net.Conn) {
		if fd := sock.FD(c); fd >= 0 {
			ss.park[d] = parkSlot{fd: fd, key: p.NewKey(), ok: true}
		}
	}
	try(toUpstream, ss.raw) // no FD for a PROXY-wrapped conn
	try(toClient, ss.up)
}

// parkSlot is a direction's registration in the poller.
type parkSlot struct {
	fd    int
	key   uint64
	ok    bool // the socket can park
	added bool // it is in the epoll set (from its first park on)
}

// runDir copies one direction until it parks or ends.
func (ss *session) runDir(d int) {
	parked := false
	defer func() {
		if r := recover(); r != nil {
			ss.panicked(r)
			parked = false
		}
		if !parked {
			ss.dirDone(d)
		}
	}()
	if d == toClient {
		parked = ss.copyToClient()
	} else {
		parked = ss.copyToUpstream()
	}
}

// parkDir arms d's socket and reports true if the direction may end its
// goroutine now. It refuses if the session was killed or the direction
// stopped (halted tells which), and if the poller cannot take the socket
// (then the direction stops trying and blocks as usual).
func (ss *session) parkDir(d int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.killed || ss.stopped[d] || !ss.park[d].ok {
		return false
	}
	ss.dirConn(d).SetReadDeadline(time.Time{}) // the idle deadline did its work
	ss.dirState[d] = dirParked
	slot := &ss.park[d]
	if err := ss.srv.poller.Arm(slot.fd, slot.key, slot.added, func() { ss.wake(d) }); err != nil {
		ss.dirState[d] = dirRunning
		slot.ok = false
		return false
	}
	slot.added = true
	ss.srv.parked.Add(1)
	return true
}

// wake runs a parked direction again (the poller saw data).
func (ss *session) wake(d int) {
	ss.mu.Lock()
	if ss.dirState[d] != dirParked {
		ss.mu.Unlock()
		return
	}
	ss.dirState[d] = dirRunning
	ss.mu.Unlock()
	ss.srv.parked.Add(-1)
	ss.runDir(d)
}

// unparkLocked restarts a parked direction so it sees a kill or a stop;
// ss.mu must be held.
func (ss *session) unparkLocked(d int) {
	if ss.dirState[d] == dirParked && ss.srv.poller.Disarm(ss.park[d].key) {
		ss.dirState[d] = dirRunning
		ss.srv.parked.Add(-1)
		go ss.runDir(d)
	}
}

// dirConn is the socket direction d reads from.
func (ss *session) dirConn(d int) net.Conn {
	if d == toClient {
		return ss.up
	}
	return ss.raw
}

// stopDir ends direction d: its reads fail from now on.
func (ss *session) stopDir(d int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.stopped[d] = true
	ss.dirConn(d).SetReadDeadline(time.Unix(1, 0))
	ss.unparkLocked(d)
}

// parkAfter is how long a direction must be quiet before it parks: short
// sessions (LOGIN, a few commands, LOGOUT) never pay for parking, idle ones
// give up their goroutine within this.
const parkAfter = 250 * time.Millisecond

// idleDeadline arms d's idle detector unless a kill or stop already set
// an expired deadline, which must stay.
func (ss *session) idleDeadline(d int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.killed && !ss.stopped[d] {
		ss.dirConn(d).SetReadDeadline(time.Now().Add(parkAfter))
	}
}

// halted reports whether d must end: the session was killed or the
// direction stopped. A timeout that is not that is only the idle detector.
func (ss *session) halted(d int) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.killed || ss.stopped[d]
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dirDone records that d ended; the second to end closes the session.
func (ss *session) dirDone(d int) {
	ss.mu.Lock()
	if ss.dirState[d] == dirDone { // a panic recovered after the direction had ended
		ss.mu.Unlock()
		return
	}
	ss.dirState[d] = dirDone
	last := ss.dirState[toUpstream] == dirDone && ss.dirState[toClient] == dirDone
	ss.mu.Unlock()
	if !last {
		return
	}
	for _, slot := range ss.park {
		if slot.added {
			ss.srv.poller.Unregister(slot.fd, slot.key)
		}
	}
	ss.endEstablished()
	ss.cleanup()
}

// copyToUpstream copies client -> upstream and reports whether it parked.
// On the client's EOF it half-closes the upstream so the server can finish
// its answer.
func (ss *session) copyToUpstream() (parked bool) {
	small := make([]byte, smallBuf)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		canPark := ss.park[toUpstream].ok
		if canPark {
			ss.idleDeadline(toUpstream)
		}
		n, err := ss.tc.Read(buf)
		if n == 0 && canPark && isTimeout(err) {
			// Quiet for parkAfter, and crypto/tls holds no complete record:
			// wait in the poller. A kill or stop also times out: then end.
			if ss.parkDir(toUpstream) {
				return true
			}
			if ss.halted(toUpstream) {
				break
			}
			continue
		}
		if n > 0 {
			ss.entry.Received(n)
			if testHookRelay != nil {
				testHookRelay(buf[:n])
			}
			ss.tracker.scanClient(buf[:n])
			if _, werr := ss.up.Write(buf[:n]); werr != nil {
				break
			}
			// Streaming (an APPEND): use a full record's buffer until a
			// short read says the burst is over.
			switch {
			case n == len(buf) && big == nil:
				big = bigPool.Get().(*[]byte)
				buf = *big
			case n < len(small) && big != nil:
				bigPool.Put(big)
				big, buf = nil, small
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				ss.entry.SetState(conntable.Closing)
				closeWrite(ss.up)
				return false
			}
			if isTimeout(err) && !ss.halted(toUpstream) {
				continue // the idle detector, with data in hand
			}
			break
		}
	}
	ss.entry.SetState(conntable.Closing)
	ss.stopDir(toClient)
	return false
}

// copyToClient copies upstream -> client and reports whether it parked.
// While data streams (a read filled the buffer) it reads on in 64 KiB
// chunks, which crypto/tls cuts into full records; when a read comes up
// short it parks until the upstream has more. It holds no buffer while it
// waits. On the upstream's EOF it sends close_notify to the client.
func (ss *session) copyToClient() (parked bool) {
	readable := sock.Readable(ss.up) // nil: TLS, or no way on this platform
	streaming := false
	for {
		if readable != nil && !streaming {
			// Wait for data without holding a buffer; after parkAfter of
			// quiet, give up the goroutine and wait in the poller.
			canPark := ss.park[toClient].ok
			if canPark {
				ss.idleDeadline(toClient)
			}
			if err := readable(); err != nil && isTimeout(err) {
				if canPark && ss.parkDir(toClient) {
					return true
				}
				if !ss.halted(toClient) {
					continue
				}
				// Killed or stopped: the read below fails and ends this.
			}
		}
		pool := &bigPool
		if streaming {
			pool = &bulkPool
		}
		bp := pool.Get().(*[]byte)
		n, err := ss.up.Read(*bp)
		streaming = n == len(*bp)
		if n > 0 {
			ss.tracker.scanServer((*bp)[:n])
			if werr := ss.writeClient((*bp)[:n]); werr != nil {
				pool.Put(bp)
				break
			}
		}
		pool.Put(bp)
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The upstream ended the session (after LOGOUT's OK, RFC
				// 9051 §6.1.3, or because it died): so does imapgate, at
				// once. The client-side direction stops; the session's
				// end sends close_notify and FIN and writes the line.
				break
			}
			if isTimeout(err) && !ss.halted(toClient) {
				// The idle detector fired mid-stream: not an error.
				streaming = false
				continue
			}
			break
		}
	}
	ss.entry.SetState(conntable.Closing)
	ss.stopDir(toUpstream)
	return false
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// endEstablished closes a logged-in session and writes courier's line for
// how it ended.
func (ss *session) endEstablished() {
	how := courierlog.EndDisconnected
	switch ss.entry.Killed() {
	case conntable.Timeout:
		ss.finalWrite("* BYE Disconnected for inactivity.\r\n")
		how = courierlog.EndTimeout
	case conntable.Shutdown:
		ss.finalWrite("* BYE Server shutting down.\r\n")
		how = courierlog.EndShutdown
	case conntable.Deleted:
		ss.finalWrite("* BYE Connection closed by the administrator.\r\n")
	default:
		if ss.tracker.loggedOut() {
			how = courierlog.EndLogout
		}
	}
	rx, tx := ss.entry.Bytes()
	ss.srv.log.SessionEnd(how, ss.entry.User(), ss.client.Remote, courierlog.Counts{
		Rcvd: rx, Sent: tx, Elapsed: time.Since(ss.start),
	})
	ss.closed()
}
