package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
)

// loginPhase is a connection's exchange before login: the buffered
// readers of both sides, the command being assembled, what the upstream
// advertised, and the phase's bounds. It borrows the conn from serve's
// goroutine, which alone touches it, and is dropped whole at login: what
// its readers still buffer goes to the relay (handOff), the rest with it.
type loginPhase struct {
	c      *conn
	set    *Settings
	ctx    context.Context // cancelled by a kill
	cr, ur *bufio.Reader   // client (through TLS) and upstream
	upID   bool            // the upstream advertises ID
	// loginDisabled: the upstream's last capability list had
	// LOGINDISABLED: it does not trust imapgate's hop, and its NO to a
	// login is about that, not the credentials.
	loginDisabled bool
	idSent        bool // imapgate's own ID went upstream (id.go)
	commands      int
	errs          int    // malformed commands so far
	cmd           []byte // command being assembled; cleared after LOGIN (password)
	out           []byte // scratch for writes
	last          []byte // the last upstream response line read
	// upErr is why the upstream failed the session before login (a read
	// error, a line or literal over the bounds, a response out of
	// protocol), reported once when the phase ends (upstreamFailed).
	upErr error
	upBye bool // the upstream sent an untagged BYE: its close is expected
}

// outcome is what a command, or the whole login phase, came to.
type outcome uint8

const (
	carryOn   outcome = iota // the command was answered: read the next one
	closed                   // client gone, cut off, or killed
	loggedOut                // LOGOUT before login
	loggedIn                 // relay from here on
)

// onlyIf is carryOn if the write that ends a command's handling worked,
// else closed.
func onlyIf(err error) outcome {
	if err != nil {
		return closed
	}
	return carryOn
}

func newLoginPhase(c *conn, ctx context.Context) *loginPhase {
	lp := &loginPhase{c: c, set: c.srv.settings(), ctx: ctx}
	lp.cr = getReader(clientReader{c}, lp.set.Login.MaxLine)
	return lp
}

// release gives the readers back to their pool; the phase is over.
func (lp *loginPhase) release() {
	putReader(lp.cr)
	putReader(lp.ur)
	lp.cr, lp.ur = nil, nil
}

// run runs the exchange before login, one command at a time: a command is
// forwarded, then the upstream's responses are relayed up to the tagged
// result. Bytes the client pipelined stay in lp.cr meanwhile, so nothing
// sent after LOGIN reaches the upstream before its tagged OK (courier's
// imaplogin would swallow them when it execs imapd).
func (lp *loginPhase) run() outcome {
	if !lp.connectUpstream() {
		lp.reportUpstreamFailure() // its own ID's answer, if that failed
		return closed
	}
	for {
		line, err := readLine(lp.cr, lp.set.Login.MaxLine)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				lp.c.writeClient([]byte("* BYE [LIMIT] Line too long.\r\n"))
			}
			return closed
		}
		lp.cmd = append(lp.cmd[:0], line...)
		if lp.commands++; lp.commands > lp.set.Login.MaxCommands {
			lp.c.writeClient([]byte("* BYE [LIMIT] Too many commands before login.\r\n"))
			return closed
		}
		if o := lp.command(); o != carryOn {
			if o == closed {
				lp.reportUpstreamFailure()
			}
			return o
		}
	}
}

// command handles the command in lp.cmd (its first line).
func (lp *loginPhase) command() outcome {
	tag, name, err := commandHead(lp.cmd)
	if testHookCommand != nil {
		testHookCommand(name)
	}
	if err != nil {
		return lp.invalid(tag, "Invalid command.")
	}
	switch name {
	case "STARTTLS":
		return onlyIf(lp.writeClientf("%s BAD STARTTLS is not available: the connection is already encrypted.\r\n", tag))
	case "ID":
		if lp.upID {
			return lp.clientID(tag)
		}
		return lp.answerID(tag)
	case "LOGIN":
		return lp.login(tag)
	case "AUTHENTICATE":
		return lp.authenticate(tag)
	case "LOGOUT":
		if lp.forward(tag) == closed {
			return closed
		}
		return loggedOut
	}
	return lp.forward(tag)
}

// upstreamFailed records why the upstream failed the session, the first
// reason only, and returns err for the caller to end with.
func (lp *loginPhase) upstreamFailed(err error) error {
	if lp.upErr == nil {
		lp.upErr = err
	}
	return err
}

// reportUpstreamFailure logs, when the phase ended because the upstream
// failed it, why (a hostile or broken upstream otherwise ended sessions
// with nothing in the log but "Disconnected"), and tells the client the
// server is unavailable, unless the upstream only closed. An upstream that
// said BYE first closed as it said it would; a killed session is the
// table's doing.
func (lp *loginPhase) reportUpstreamFailure() {
	c := lp.c
	switch {
	case lp.upErr == nil || (lp.upBye && errors.Is(lp.upErr, io.EOF)):
	case errors.Is(lp.upErr, io.EOF):
		// A plain close is also how courier's imaplogin ends a session
		// at its own login time limit (60 s): the client sees the close,
		// as from courier alone; the log says who closed.
		if c.entry.Killed() == conntable.NotKilled {
			c.srv.log.Message(courierlog.Info, fmt.Sprintf("upstream %s closed the connection before login, after %s and %d commands, %s",
				lp.set.Upstream, time.Since(c.start).Round(time.Second), lp.commands, courierlog.IPPort(c.client.Remote)))
		}
	default:
		lp.unavailable(fmt.Errorf("%s failed the session before login: %w", lp.set.Upstream, lp.upErr))
	}
}

// invalid answers a malformed command; after MaxErrors of them the client
// is cut off (garbage, or another protocol talking to the port).
func (lp *loginPhase) invalid(tag, text string) outcome {
	lp.errs++
	if lp.errs >= lp.set.Login.MaxErrors {
		lp.c.writeClient([]byte("* BYE Too many invalid commands.\r\n"))
		return closed
	}
	if tag == "" {
		tag = "*"
	}
	return onlyIf(lp.writeClientf("%s BAD %s\r\n", tag, text))
}

// literalTooLarge ends the session: the client announced more than the
// login phase allows.
func (lp *loginPhase) literalTooLarge() outcome {
	lp.c.writeClient([]byte("* BYE [LIMIT] Literal too large.\r\n"))
	return closed
}

func (lp *loginPhase) writeClientf(format string, args ...any) error {
	lp.out = fmt.Appendf(lp.out[:0], format, args...)
	return lp.c.writeClient(lp.out)
}

// handOff ends the login phase of a logged-in connection and returns the
// relay that owns the connection from now on; nil if the session ended
// here (then the caller cleans up). What the phase's readers already
// buffered is handed over first: commands the client pipelined after LOGIN
// (held until the tagged OK) go upstream, anything the upstream sent after
// its OK goes to the client.
func (lp *loginPhase) handOff() *relay {
	c := lp.c
	c.endContext()
	r := &relay{c: c}
	if n := lp.cr.Buffered(); n > 0 {
		b, _ := lp.cr.Peek(n)
		r.tracker.scanClient(b)
		if _, err := c.up.Write(b); err != nil {
			r.end()
			return nil
		}
	}
	if n := lp.ur.Buffered(); n > 0 {
		b, _ := lp.ur.Peek(n)
		r.tracker.scanServer(b)
		if c.writeClient(b) != nil {
			r.end()
			return nil
		}
	}
	return r
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
