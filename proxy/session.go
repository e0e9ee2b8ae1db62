package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/limiter"
)

// session is one client connection. Its goroutine owns everything here
// except mu-guarded fields, which the table's Killer also touches.
type session struct {
	srv    *Server
	set    *settings
	raw    net.Conn // as accepted; PROXY-aware if the listener is
	tc     *tls.Conn
	cr     *bufio.Reader // client, login phase only
	ur     *bufio.Reader // upstream, login phase only
	entry  *conntable.Entry
	ticket limiter.Ticket // zero (holds nothing) without a limiter
	client Client
	start  time.Time

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	up       net.Conn
	killed   bool
	dirState [2]uint8    // relay directions: running, parked, done
	stopped  [2]bool     // a direction told to end
	park     [2]parkSlot // poller registrations, fixed before the relay starts

	pre    *admission // decided in the accept loop, if it was
	upID   bool       // upstream advertises ID
	idSent bool       // imapgate's own ID went upstream (id.go)
	// handedOff: the relay goroutines own the session now (see relay).
	handedOff bool
	commands  int
	errs      int
	cmd       []byte // command being assembled; cleared after LOGIN (password)
	out       []byte // scratch for writes
	last      []byte // the last upstream response line read
	// pendingTagged is a tagged result authenticate read for loginResult.
	pendingTagged []byte
	tracker       cmdTracker
	// writeFailed: a write to the client failed, possibly in the middle of
	// a TLS record (a kill's deadline), and the record sequence has moved
	// on: any later record, close_notify included, would reach the client
	// as "bad record MAC". Set by whichever goroutine writes.
	writeFailed atomic.Bool
}

// outcome of the login phase.
type outcome int

const (
	closed    outcome = iota // client gone, cut off, or killed
	loggedOut                // LOGOUT before login
	loggedIn                 // relay from here on
)

func (s *Server) serveConn(raw net.Conn, pre *admission) {
	ss := &session{srv: s, set: s.cur.Load(), raw: raw, start: time.Now(), pre: pre}
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	defer func() {
		// recover works only when called by the deferred function itself.
		if r := recover(); r != nil {
			ss.panicked(r)
		}
		if !ss.handedOff {
			ss.cleanup()
		}
	}()
	ss.run()
}

// growStack grows the calling goroutine's stack, while it is still
// shallow, to the size the TLS handshake and login will reach anyway
// (handshake calls it, once the client has sent a whole record: a silent
// connection keeps a small stack). Grown
// later, deep inside crypto/tls, each doubling copies and adjusts every
// frame on the way: that was 3.5 % of a session's CPU. The handshake
// reaches a 16 KiB stack (with an 8 KiB one, profiles still showed 2.6 % in
// growth), so this costs no memory that the session would not take anyway;
// the stack goes with the goroutine at login.
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

// panicked handles a panic recovered in one of the session's goroutines,
// as net/http does for a handler: a bug costs this session, never the
// process and the other sessions. It logs the panic with the connection's
// id and stack, counts it, and kills the session so that its other
// goroutine (if any) ends too; the caller then cleans up as usual.
func (ss *session) panicked(r any) {
	id := uint64(0)
	if ss.entry != nil {
		id = ss.entry.ID()
	}
	ss.srv.log.Message(courierlog.Crit, fmt.Sprintf("panic in session id=%d, ip=[%s]: %v\n%s",
		id, courierlog.Addr(ss.client.Remote.Addr()), r, debug.Stack()))
	ss.srv.events.Panic()
	ss.kill(conntable.NotKilled)
}

// cleanup releases everything the session holds, once: by serveConn, or,
// after the hand-off to the relay, by the relay goroutine that ends last.
func (ss *session) cleanup() {
	ss.endContext()
	ss.raw.Close()
	ss.mu.Lock()
	if ss.up != nil {
		ss.up.Close()
	}
	ss.mu.Unlock()
	putReader(ss.cr)
	putReader(ss.ur)
	ss.cr, ss.ur = nil, nil
	ss.ticket.Release()
	if ss.entry != nil {
		ss.srv.table.Remove(ss.entry)
	}
	ss.srv.sessions.Done()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (ss *session) run() {
	s := ss.srv
	var admitted limiter.Decision // carries the limits that apply to this address
	if pre := ss.pre; pre != nil {
		ss.client = pre.client
	} else {
		// With a proxyproto listener this reads the PROXY header, bounded
		// by its ReadHeaderTimeout, here in the session's goroutine.
		ss.client = Client{Remote: addrPortOf(ss.raw.RemoteAddr()), Local: addrPortOf(ss.raw.LocalAddr())}
		if !ss.client.Remote.IsValid() {
			return
		}
		s.events.Accepted()
	}
	if s.limiter != nil {
		var t limiter.Ticket
		if ss.pre != nil {
			t, admitted = ss.pre.ticket, ss.pre.decision
		} else {
			t, admitted = s.limiter.Admit(ss.client.Remote.Addr(), time.Now())
		}
		ss.noteDryRun(admitted, "")
		if admitted.Refused && admitted.Action != limiter.Bye {
			s.refusedBeforeTLS(admitted, ss.client.Remote.Addr())
			return
		}
		if !admitted.Refused {
			ss.ticket = t // cleanup releases it
		}
	}
	entry, err := s.table.Insert(ss.client.Remote, ss.client.Local, ss.kill)
	if err != nil {
		s.events.Refused("table_full", false)
		s.tracker.RefusedFrom(ss.client.Remote.Addr())
		return
	}
	ss.entry = entry // cleanup removes it
	if admitted.Refused {
		ss.refuseWithBye(admitted)
		return
	}
	// Until its client's first TLS record is whole the connection is
	// silent, and waits here: with a shallow stack (a flood of thousands
	// costs the collector little to scan), before any TLS state, and
	// before a pre-login slot, so that waiting for one does not hide from
	// the table that nothing came (an honest client's ClientHello is here
	// at once; a silent flood's never comes, and goes at the silent
	// timeout, or first when the table is full).
	n, err := waitFirstRecord(ss.raw)
	switch {
	case err == nil && n == 0:
		return // the client closed before a whole record
	case n > 0:
		entry.Progress(n, true)
	}
	if err != nil && !ss.ticket.NeedsWait() {
		if entry.Killed() == conntable.Timeout {
			s.log.Message(courierlog.Debug, fmt.Sprintf("ip=[%s], TLS handshake timed out.", courierlog.Addr(ss.client.Remote.Addr())))
		}
		return
	}
	if ss.ticket.NeedsWait() {
		if err == nil {
			err = ss.ticket.WaitPreauth(ss.ctx)
		}
		if err != nil {
			// Cut off: the admission decision names this limit and its
			// value for this address (overrides included).
			admitted.Refused = true
			s.refusedBeforeTLS(admitted, ss.client.Remote.Addr())
			return
		}
		entry.SetState(conntable.Handshake) // the handshake's own clock starts now
	}
	if !ss.handshake() {
		return
	}
	// Keepalive only for sessions that got this far: the listener leaves
	// it off so refused connections cost no setsockopt calls.
	if kc, ok := ss.raw.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		kc.SetKeepAliveConfig(keepAlive)
	}
	entry.SetState(conntable.Preauth)
	s.log.Connection(ss.client.Remote)
	ss.cr = getReader(clientReader{ss}, ss.set.login.MaxLine)

	switch ss.loginPhase() {
	case loggedIn:
		ss.endContext()
		ss.relay()
	case loggedOut:
		rx, tx := entry.Bytes()
		s.log.LogoutPreauth(ss.client.Remote, courierlog.Counts{Rcvd: rx, Sent: tx})
		ss.closed()
	default:
		ss.endPreauth()
	}
}

func (ss *session) handshake() bool {
	growStack()
	pc := &progressConn{Conn: ss.raw, entry: ss.entry}
	ss.tc = tls.Server(pc, ss.srv.tlsConfig)
	start := time.Now()
	// Handshake, not HandshakeContext: the table's Killer interrupts it by
	// deadline, which costs no goroutine per connection.
	err := ss.tc.Handshake()
	pc.done = true
	ss.srv.events.Handshake(time.Since(start), err)
	if err == nil {
		cs := ss.tc.ConnectionState()
		ss.client.TLSVersion, ss.client.CipherSuite, ss.client.ServerName = cs.Version, cs.CipherSuite, cs.ServerName
	}
	if err != nil {
		if ss.entry.Killed() == conntable.Timeout {
			ss.srv.log.Message(courierlog.Debug, fmt.Sprintf("ip=[%s], TLS handshake timed out.", courierlog.Addr(ss.client.Remote.Addr())))
		}
		return false
	}
	return true
}

// kill is the table's Killer: it interrupts whatever I/O the session is
// blocked in. The session's goroutine notices and ends the session.
func (ss *session) kill(conntable.Reason) {
	ss.mu.Lock()
	ss.killed = true
	past := time.Unix(1, 0)
	ss.raw.SetDeadline(past)
	if ss.up != nil {
		ss.up.SetDeadline(past)
	}
	// Parked relay directions have no goroutine to interrupt: restart them
	// so they read, fail and end the session.
	ss.unparkLocked(toUpstream)
	ss.unparkLocked(toClient)
	cancel := ss.cancel
	ss.mu.Unlock()
	cancel()
}

// endContext cancels the login phase's context and lets it go. A logged-in
// session does not need it, and an idle one would otherwise keep it for
// hours, with the children map the upstream dial's timeout left in it
// (a few hundred bytes per session). Only the goroutine that owns the
// session (the login phase's, or the relay's at cleanup) calls it: that is
// the one that reads ss.ctx.
func (ss *session) endContext() {
	ss.mu.Lock()
	cancel := ss.cancel
	ss.ctx, ss.cancel = nil, noCancel
	ss.mu.Unlock()
	cancel()
}

func noCancel() {}

// setUp publishes the upstream conn so kill can interrupt it.
func (ss *session) setUp(up net.Conn) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.up = up
	return !ss.killed
}

// upDeadline sets the upstream read deadline unless the session was killed
// (a kill's deadline in the past must win).
func (ss *session) upDeadline(t time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.killed {
		ss.up.SetReadDeadline(t)
	}
}

// finalWrite sends a last line to a client whose deadlines a kill may have
// set in the past.
func (ss *session) finalWrite(line string) {
	if ss.tc == nil {
		return
	}
	ss.raw.SetWriteDeadline(time.Now().Add(2 * time.Second))
	ss.writeClient([]byte(line))
}

type clientReader struct{ ss *session }

func (r clientReader) Read(p []byte) (int, error) {
	n, err := r.ss.tc.Read(p)
	r.ss.entry.Received(n)
	return n, err
}

func (ss *session) writeClient(b []byte) error {
	n, err := ss.tc.Write(b)
	ss.entry.Sent(n)
	if err != nil {
		ss.writeFailed.Store(true)
	}
	return err
}

// progressConn tells the entry of every byte read from or written to the
// client, and of when imapgate waits for the client: a handshake or login
// that is moving, or waiting on imapgate, is neither silent nor stalled
// (conntable's early drop). Until the handshake is done it follows the TLS
// record framing of what the client sends: only a complete record is
// progress, so half a ClientHello followed by nothing leaves the entry
// silent. Only the goroutine reading the client touches the framing.
type progressConn struct {
	net.Conn
	entry *conntable.Entry
	frame recordFrame
	done  bool // handshake over: every byte is progress
}

func (c *progressConn) Read(p []byte) (int, error) {
	c.entry.Waiting()
	n, err := c.Conn.Read(p)
	c.entry.Progress(n, c.done || c.frame.feed(p[:n]))
	return n, err
}

func (c *progressConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.entry.Touch()
	}
	return n, err
}

// recordFrame follows TLS record boundaries (RFC 8446 §5.1: a 5-byte
// header whose last two bytes are the length, then that many bytes).
type recordFrame struct {
	hdr  [5]byte
	nhdr int // header bytes seen of the current record
	left int // body bytes still to come
}

// feed consumes b and reports whether it completed at least one record.
func (f *recordFrame) feed(b []byte) (completed bool) {
	for len(b) > 0 {
		if f.nhdr < len(f.hdr) {
			k := copy(f.hdr[f.nhdr:], b)
			f.nhdr += k
			b = b[k:]
			if f.nhdr < len(f.hdr) {
				return completed
			}
			f.left = int(f.hdr[3])<<8 | int(f.hdr[4])
		}
		k := min(f.left, len(b))
		f.left -= k
		b = b[k:]
		if f.left == 0 {
			completed, f.nhdr = true, 0
		}
	}
	return completed
}

func (ss *session) writeClientf(format string, args ...any) error {
	ss.out = fmt.Appendf(ss.out[:0], format, args...)
	return ss.writeClient(ss.out)
}

var readerPool sync.Pool

// getReader returns a pooled bufio.Reader of at least size bytes over r.
func getReader(r io.Reader, size int) *bufio.Reader {
	if br, ok := readerPool.Get().(*bufio.Reader); ok && br.Size() >= size {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, size)
}

func putReader(br *bufio.Reader) {
	if br != nil {
		br.Reset(nil)
		readerPool.Put(br)
	}
}

// keepAlive finds dead clients of idle sessions (IDLE can be silent for
// 29 minutes) long before the established timeout.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Minute, Interval: 30 * time.Second, Count: 4}

// upstreamMaxLine bounds a response line from the upstream before login.
const upstreamMaxLine = 16 << 10

// connectUpstream dials and relays the greeting. It reports false when the
// session cannot go on (the client has been told why).
func (ss *session) connectUpstream() bool {
	s := ss.srv
	start := time.Now()
	up, err := ss.set.upstream.Dial(ss.ctx, ss.client)
	s.events.UpstreamDial(time.Since(start), err)
	if err != nil {
		ss.unavailable(err)
		return false
	}
	if !ss.setUp(up) {
		return false
	}
	ss.ur = getReader(up, upstreamMaxLine)
	ss.upDeadline(time.Now().Add(ss.set.login.GreetingTimeout))
	line, err := readLine(ss.ur, upstreamMaxLine)
	if err != nil {
		if errors.Is(err, errLineTooLong) {
			err = errors.New("greeting line too long")
		}
		ss.unavailable(fmt.Errorf("no greeting from %s: %w", ss.set.upstream, err))
		return false
	}
	ss.upDeadline(time.Time{})
	text := trimCRLF(line)
	switch {
	case hasPrefixFold(text, "* OK"):
	case hasPrefixFold(text, "* BYE"):
		ss.writeClient(line)
		return false
	default:
		ss.unavailable(fmt.Errorf("unexpected greeting from %s: %.40q", ss.set.upstream, text))
		return false
	}
	return ss.relayLine(text) == nil
}

// unavailable tells the client the upstream cannot be reached, and logs why.
func (ss *session) unavailable(err error) {
	if ss.entry.Killed() != conntable.NotKilled {
		return
	}
	ss.srv.log.Message(courierlog.Err, fmt.Sprintf("upstream unavailable: %v, ip=[%s], port=[%d]",
		err, courierlog.Addr(ss.client.Remote.Addr()), ss.client.Remote.Port()))
	ss.writeClient([]byte("* BYE [UNAVAILABLE] Server unavailable, please try again later.\r\n"))
}

// relayLine writes one upstream line (no CRLF) to the client with its
// capabilities rewritten for a client already on TLS.
func (ss *session) relayLine(text []byte) error {
	out, caps := rewriteCaps(ss.out[:0], text)
	ss.sawCaps(text, caps)
	ss.out = append(out, '\r', '\n')
	return ss.writeClient(ss.out)
}

// sawCaps learns from a capability list the upstream sent (text is the
// line before rewriting, caps what rewriteCaps kept; nil if the line had
// none): whether it speaks ID, and whether it refuses plaintext logins.
func (ss *session) sawCaps(text []byte, caps [][]byte) {
	if caps == nil {
		return
	}
	ss.upID = hasCap(caps, "ID")
	if start, end := capRange(text); start >= 0 && hasCap(bytes.Fields(text[start:end]), "LOGINDISABLED") {
		ss.srv.upstreamProblem(problemLoginDisabled)
	}
}

// endPreauth closes a session that ended before login.
func (ss *session) endPreauth() {
	switch ss.entry.Killed() {
	case conntable.Timeout:
		ss.finalWrite("* BYE Disconnected for inactivity.\r\n")
	case conntable.EarlyDrop:
		ss.finalWrite("* BYE [UNAVAILABLE] Server busy, please try again later.\r\n")
	case conntable.Deleted:
		ss.finalWrite("* BYE Connection closed by the administrator.\r\n")
	case conntable.Shutdown:
		ss.finalWrite("* BYE Server shutting down.\r\n")
		ss.srv.log.ShutdownPreauth(ss.client.Remote, time.Since(ss.start))
		ss.closed()
		return
	}
	ss.srv.log.Disconnected(ss.client.Remote, time.Since(ss.start))
	ss.closed()
}

// closed ends a session that reached TLS: close_notify, then FIN, then a
// short drain of what the client still sends, before cleanup closes the
// socket. Closing a socket with unread input makes the kernel send RST,
// and a client's kernel discards what it had not yet read when the RST
// arrives: the last "* BYE" that says why would be lost. A killed
// session (timeout, early drop, shutdown, administrator) is not drained.
func (ss *session) closed() {
	ss.srv.events.Closed()
	ss.raw.SetWriteDeadline(time.Now().Add(lingerTime))
	if !ss.writeFailed.Load() {
		ss.tc.CloseWrite() // close_notify
	}
	if cw, ok := ss.raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else if pc, ok := ss.raw.(interface{ Raw() net.Conn }); ok { // a PROXY-protocol conn
		closeWrite(pc.Raw())
	}
	if ss.entry.Killed() == conntable.NotKilled {
		ss.drain()
	}
}

// lingerTime and lingerBytes bound the drain of a closing session: a
// client that read our last line closes at once; one that keeps sending
// is cut off with a reset after this.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// drain reads and discards the client's input until it closes, for at most
// lingerTime and lingerBytes.
func (ss *session) drain() {
	ss.mu.Lock()
	if ss.killed {
		ss.mu.Unlock()
		return
	}
	ss.raw.SetReadDeadline(time.Now().Add(lingerTime))
	ss.mu.Unlock()
	bp := bigPool.Get().(*[]byte)
	defer bigPool.Put(bp)
	for total := 0; total < lingerBytes; {
		n, err := ss.raw.Read(*bp)
		total += n
		if err != nil {
			return
		}
	}
}
