package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
)

// upstreamMaxLine bounds a response line from the upstream before login.
const upstreamMaxLine = 16 << 10

// connectUpstream dials and relays the greeting. It reports false when the
// session cannot go on (the client has been told why).
func (lp *loginPhase) connectUpstream() bool {
	c, s := lp.c, lp.c.srv
	start := time.Now()
	up, err := lp.set.Upstream.Dial(lp.ctx, c.client)
	s.events.UpstreamDial(time.Since(start), err)
	if err != nil {
		lp.unavailable(err)
		return false
	}
	if !c.setUp(up) {
		return false
	}
	lp.ur = getReader(up, upstreamMaxLine)
	c.upDeadline(time.Now().Add(lp.set.Login.GreetingTimeout))
	line, err := readLine(lp.ur, upstreamMaxLine)
	if err != nil {
		if errors.Is(err, errLineTooLong) {
			err = fmt.Errorf("a line over %d bytes", upstreamMaxLine)
		}
		lp.unavailable(fmt.Errorf("no greeting from %s: %w%s", lp.set.Upstream, err, proxyHintFor(err, lp.set.Upstream)))
		return false
	}
	c.upDeadline(time.Time{})
	text := trimCRLF(line)
	switch {
	case hasPrefixFold(text, "* OK"):
	case hasPrefixFold(text, "* BYE"):
		// The upstream refuses the session (courier: "Temporary problem";
		// a server at its own limit): the client hears its words, the log
		// says whose they were.
		c.srv.log.Message(courierlog.Warning, fmt.Sprintf("upstream %s refused the session at its greeting: %.80q, %s",
			lp.set.Upstream, text, courierlog.IPPort(c.client.Remote)))
		c.writeClient(line)
		return false
	default:
		lp.unavailable(fmt.Errorf("unexpected greeting from %s: %.40q", lp.set.Upstream, text))
		return false
	}
	if lp.relayLine(text) != nil {
		return false
	}
	// Tell an upstream that speaks ID who the client is before anything
	// else, so that even a session that never logs in is logged with the
	// client's address (Dovecot's "Disconnected (no auth attempts)" lines
	// that its fail2ban filter reads).
	return lp.sendOwnID()
}

// unavailable tells the client the upstream cannot be reached, and logs why.
func (lp *loginPhase) unavailable(err error) {
	c := lp.c
	if c.entry.Killed() != conntable.NotKilled {
		return
	}
	c.srv.log.Message(courierlog.Err, fmt.Sprintf("upstream unavailable: %v, %s", err, courierlog.IPPort(c.client.Remote)))
	c.writeClient([]byte("* BYE [UNAVAILABLE] Server unavailable, please try again later.\r\n"))
}

// relayLine writes one upstream line (no CRLF) to the client with its
// capabilities rewritten for a client already on TLS.
func (lp *loginPhase) relayLine(text []byte) error {
	out, caps := rewriteCaps(lp.out[:0], text)
	lp.sawCaps(text, caps)
	lp.out = append(out, '\r', '\n')
	return lp.c.writeClient(lp.out)
}

// sawCaps learns from a capability list the upstream sent (text is the
// line before rewriting, caps what rewriteCaps kept; nil if the line had
// none): whether it speaks ID, and whether it refuses plaintext logins.
func (lp *loginPhase) sawCaps(text []byte, caps [][]byte) {
	if caps == nil {
		return
	}
	lp.upID = hasCap(caps, "ID")
	start, end := capRange(text)
	lp.loginDisabled = start >= 0 && hasCap(bytes.Fields(text[start:end]), "LOGINDISABLED")
	if lp.loginDisabled {
		lp.c.srv.upstreamProblem(problemLoginDisabled)
	}
}
