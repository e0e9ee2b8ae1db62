package proxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"imapgate/conntable"
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

// copyToUpstream copies client -> upstream and reports whether it parked.
// On the client's EOF it half-closes the upstream so the server can finish
// its answer.
func (r *relay) copyToUpstream() (parked bool) {
	small := make([]byte, smallBuf)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		canPark := r.park[toUpstream].ok
		if canPark {
			r.idleDeadline(toUpstream)
		}
		n, err := r.c.tc.Read(buf)
		if n == 0 && canPark && isTimeout(err) {
			// Quiet for parkAfter, and crypto/tls holds no complete record:
			// wait in the poller. A kill or stop also times out: then end.
			if r.parkDir(toUpstream) {
				return true
			}
			if r.halted(toUpstream) {
				break
			}
			continue
		}
		if n > 0 {
			r.c.entry.Received(n)
			if testHookRelay != nil {
				testHookRelay(buf[:n])
			}
			r.tracker.scanClient(buf[:n])
			if _, werr := r.c.up.Write(buf[:n]); werr != nil {
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
				r.c.entry.SetState(conntable.Closing)
				closeWrite(r.c.up)
				return false
			}
			if isTimeout(err) && !r.halted(toUpstream) {
				continue // the idle detector, with data in hand
			}
			break
		}
	}
	r.c.entry.SetState(conntable.Closing)
	r.stopDir(toClient)
	return false
}

// copyToClient copies upstream -> client and reports whether it parked.
// While data streams (a read filled the buffer) it reads on in 64 KiB
// chunks, which crypto/tls cuts into full records; when a read comes up
// short it parks until the upstream has more. It holds no buffer while it
// waits. On the upstream's EOF it sends close_notify to the client.
func (r *relay) copyToClient() (parked bool) {
	readable := sock.Readable(r.c.up) // nil: TLS, or no way on this platform
	streaming := false
	for {
		if readable != nil && !streaming {
			// Wait for data without holding a buffer; after parkAfter of
			// quiet, give up the goroutine and wait in the poller.
			canPark := r.park[toClient].ok
			if canPark {
				r.idleDeadline(toClient)
			}
			if err := readable(); err != nil && isTimeout(err) {
				if canPark && r.parkDir(toClient) {
					return true
				}
				if !r.halted(toClient) {
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
		n, err := r.c.up.Read(*bp)
		streaming = n == len(*bp)
		if n > 0 {
			r.tracker.scanServer((*bp)[:n])
			if werr := r.c.writeClient((*bp)[:n]); werr != nil {
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
			if isTimeout(err) && !r.halted(toClient) {
				// The idle detector fired mid-stream: not an error.
				streaming = false
				continue
			}
			break
		}
	}
	r.c.entry.SetState(conntable.Closing)
	r.stopDir(toUpstream)
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
