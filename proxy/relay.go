package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
)

// After login the proxy only copies bytes. The design keeps an idle
// session cheap: nothing is allocated per read, the upstream->client
// direction holds no buffer while it waits (it waits for readability on
// the raw socket, then borrows a pooled 16 KiB buffer, one TLS record's
// worth), and the client->upstream direction reads through a small
// per-session buffer, borrowing a large one only while data streams.

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
		ss.tracker.scan(b)
		if _, err := ss.up.Write(b); err != nil {
			ss.endEstablished()
			return
		}
	}
	if n := ss.ur.Buffered(); n > 0 {
		b, _ := ss.ur.Peek(n)
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
	// grew through the TLS handshake) ends: an idle session keeps two small
	// stacks. The goroutine that finishes last closes the session.
	ss.handedOff = true
	var running atomic.Int32
	running.Store(2)
	finish := func() {
		if running.Add(-1) == 0 {
			ss.endEstablished()
			ss.cleanup()
		}
	}
	go func() {
		defer finish()
		defer ss.recoverPanic()
		ss.copyToClient()
	}()
	go func() {
		defer finish()
		defer ss.recoverPanic()
		ss.copyToUpstream()
	}()
}

// copyToUpstream copies client -> upstream. On the client's EOF it
// half-closes the upstream so the server can finish its answer.
func (ss *session) copyToUpstream() {
	small := make([]byte, smallBuf)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		n, err := ss.tc.Read(buf)
		if n > 0 {
			ss.entry.Received(n)
			ss.tracker.scan(buf[:n])
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
				return
			}
			break
		}
	}
	ss.entry.SetState(conntable.Closing)
	ss.up.SetReadDeadline(time.Unix(1, 0)) // stop the other direction too
}

// copyToClient copies upstream -> client. While idle it holds no buffer:
// it waits for the upstream socket to become readable, then borrows one.
// While data streams (a read filled the buffer) it skips the wait and reads
// in 64 KiB chunks, which crypto/tls cuts into full records. On the
// upstream's EOF it sends close_notify to the client.
func (ss *session) copyToClient() {
	rc := rawConn(ss.up)
	var peek [1]byte
	// readable reports whether a read would not block: data, EOF or an
	// error. Returning false makes RawConn.Read wait on the poller.
	readable := func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EINTR
	}
	streaming := false
	for {
		if rc != nil && !streaming {
			if err := rc.Read(readable); err != nil {
				break
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
			if werr := ss.writeClient((*bp)[:n]); werr != nil {
				pool.Put(bp)
				break
			}
		}
		pool.Put(bp)
		if err != nil {
			if errors.Is(err, io.EOF) {
				ss.entry.SetState(conntable.Closing)
				ss.tc.CloseWrite()
				return
			}
			break
		}
	}
	ss.entry.SetState(conntable.Closing)
	ss.raw.SetReadDeadline(time.Unix(1, 0)) // stop the other direction too
}

// rawConn returns the syscall.RawConn of a plain socket upstream, whose
// readability can be awaited without a buffer; nil for anything else (TLS
// may hold decrypted bytes the socket no longer shows).
func rawConn(c net.Conn) syscall.RawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn: // the exec upstream's socketpair
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
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
		if ss.tracker.logout {
			how = courierlog.EndLogout
		}
	}
	rx, tx := ss.entry.Bytes()
	ss.srv.log.SessionEnd(how, ss.entry.User(), ss.client.Remote, courierlog.Counts{
		Rcvd: rx, Sent: tx, Elapsed: time.Since(ss.start),
	})
	ss.closed()
}

// cmdTracker follows the client's command stream after login just enough
// to notice LOGOUT: it splits lines, skips literal data without looking at
// it, and checks each command's name.
type cmdTracker struct {
	skip   int64    // literal bytes still to pass over
	line   []byte   // start of the current line, at most trackHead bytes
	tail   [24]byte // enough for "{4294967295+}\r\n"
	nTail  int
	logout bool
}

const trackHead = 64

func (t *cmdTracker) scan(b []byte) {
	for len(b) > 0 {
		if t.skip > 0 {
			n := min(int64(len(b)), t.skip)
			t.skip -= n
			b = b[n:]
			continue
		}
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i+1]
		}
		if room := trackHead - len(t.line); room > 0 {
			t.line = append(t.line, chunk[:min(room, len(chunk))]...)
		}
		t.keepTail(chunk)
		b = b[len(chunk):]
		if i >= 0 {
			t.endLine()
		}
	}
}

func (t *cmdTracker) keepTail(chunk []byte) {
	if len(chunk) >= len(t.tail) {
		copy(t.tail[:], chunk[len(chunk)-len(t.tail):])
		t.nTail = len(t.tail)
		return
	}
	keep := min(t.nTail, len(t.tail)-len(chunk))
	copy(t.tail[:], t.tail[t.nTail-keep:t.nTail])
	copy(t.tail[keep:], chunk)
	t.nTail = keep + len(chunk)
}

func (t *cmdTracker) endLine() {
	if _, name, err := commandHead(t.line); err == nil && name == "LOGOUT" {
		t.logout = true
	}
	if lit, ok, err := trailingLiteral(t.tail[:t.nTail]); ok && err == nil {
		t.skip = lit.size
	}
	t.line = t.line[:0]
	t.nTail = 0
}
