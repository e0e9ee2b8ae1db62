package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"time"

	"imapgate/conntable"
	"imapgate/limiter"
)

// loginPhase runs the exchange before login, one command at a time: a
// command is forwarded, then the upstream's responses are relayed up to the
// tagged result. Bytes the client pipelined stay in ss.cr meanwhile, so
// nothing sent after LOGIN reaches the upstream before its tagged OK
// (courier's imaplogin would swallow them when it execs imapd).
func (ss *session) loginPhase() outcome {
	if !ss.connectUpstream() {
		return closed
	}
	lim := ss.set.login
	for {
		line, err := readLine(ss.cr, ss.set.login.MaxLine)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				ss.writeClient([]byte("* BYE [LIMIT] Line too long.\r\n"))
			}
			return closed
		}
		ss.cmd = append(ss.cmd[:0], line...)
		if ss.commands++; ss.commands > lim.MaxCommands {
			ss.writeClient([]byte("* BYE [LIMIT] Too many commands before login.\r\n"))
			return closed
		}
		tag, name, err := commandHead(ss.cmd)
		if testHookCommand != nil {
			testHookCommand(name)
		}
		if err != nil {
			if !ss.invalid(tag, "Invalid command.") {
				return closed
			}
			continue
		}
		var res outcome
		var ok bool
		switch name {
		case "STARTTLS":
			ok = ss.writeClientf("%s BAD STARTTLS is not available: the connection is already encrypted.\r\n", tag) == nil
			res = -1
		case "ID":
			if ss.upID {
				res, ok = ss.clientID(tag)
			} else {
				res, ok = ss.answerID(tag)
			}
		case "LOGIN":
			res, ok = ss.login(tag)
		case "AUTHENTICATE":
			res, ok = ss.authenticate(tag)
		case "LOGOUT":
			if res, ok = ss.forward(tag); ok {
				return loggedOut
			}
		default:
			res, ok = ss.forward(tag)
		}
		if !ok {
			return closed
		}
		if res == loggedIn {
			return loggedIn
		}
	}
}

// invalid answers a malformed command and reports whether the client may
// go on: after MaxErrors of them it is cut off (garbage, or another
// protocol talking to the port).
func (ss *session) invalid(tag, text string) bool {
	ss.errs++
	if ss.errs >= ss.set.login.MaxErrors {
		ss.writeClient([]byte("* BYE Too many invalid commands.\r\n"))
		return false
	}
	if tag == "" {
		tag = "*"
	}
	return ss.writeClientf("%s BAD %s\r\n", tag, text) == nil
}

// literalTooLarge ends the session: the client announced more than the
// login phase allows.
func (ss *session) literalTooLarge() (outcome, bool) {
	ss.writeClient([]byte("* BYE [LIMIT] Literal too large.\r\n"))
	return closed, false
}

// forward relays the command in ss.cmd (its first line read so far) and
// the rest of it, literals included, then the responses up to the tagged
// one. Synchronising literals wait for the upstream's continuation.
func (ss *session) forward(tag string) (outcome, bool) {
	seg := ss.cmd
	for {
		lit, has, err := trailingLiteral(seg)
		if err != nil {
			return -1, ss.invalid(tag, "Invalid literal.")
		}
		if has && lit.size > int64(ss.set.login.MaxLiteral) {
			return ss.literalTooLarge()
		}
		if _, err := ss.up.Write(seg); err != nil {
			return closed, false
		}
		if !has {
			break
		}
		if !lit.nonSync {
			kind, last, err := ss.relayResponses(tag, true)
			if err != nil {
				return closed, false
			}
			if kind == respTagged {
				return -1, ss.writeClient(last) == nil
			}
		}
		if _, err := io.CopyN(ss.up, ss.cr, lit.size); err != nil {
			return closed, false
		}
		line, err := readLine(ss.cr, ss.set.login.MaxLine)
		if err != nil {
			return closed, false
		}
		seg = append(ss.cmd[:0], line...)
	}
	_, last, err := ss.relayResponses(tag, false)
	if err != nil {
		return closed, false
	}
	return -1, ss.writeClient(last) == nil
}

// readCommand reads the rest of the command in ss.cmd locally, answering
// synchronising literals itself, so ss.cmd ends up holding all of it.
func (ss *session) readCommand() (ok, fits bool) {
	seg := ss.cmd
	for {
		lit, has, err := trailingLiteral(seg)
		if err != nil || !has {
			return err == nil, true
		}
		if lit.size > int64(ss.set.login.MaxLiteral) {
			return true, false
		}
		if !lit.nonSync {
			if ss.writeClient([]byte("+ Ready for literal data\r\n")) != nil {
				return false, true
			}
		}
		start := len(ss.cmd)
		ss.cmd = append(ss.cmd, make([]byte, lit.size)...)
		if _, err := io.ReadFull(ss.cr, ss.cmd[start:]); err != nil {
			return false, true
		}
		line, err := readLine(ss.cr, ss.set.login.MaxLine)
		if err != nil {
			return false, true
		}
		start = len(ss.cmd)
		ss.cmd = append(ss.cmd, line...)
		seg = ss.cmd[start:]
	}
}

// answerID answers ID for an upstream that does not support it (courier
// only knows ID after login; go-imap's server hangs up on it).
func (ss *session) answerID(tag string) (outcome, bool) {
	ok, fits := ss.readCommand()
	if !ok {
		return closed, false
	}
	if !fits {
		return ss.literalTooLarge()
	}
	if _, _, _, err := parseArgs(ss.cmd); err != nil {
		return -1, ss.invalid(tag, "Invalid ID command.")
	}
	return -1, ss.writeClientf("* ID NIL\r\n%s OK ID completed.\r\n", tag) == nil
}

// login handles LOGIN: the command is read whole here (the proxy answers
// its synchronising literals), checked against the per-user limit, then
// re-encoded for the upstream. Only the user name is kept.
func (ss *session) login(tag string) (outcome, bool) {
	ok, fits := ss.readCommand()
	if !ok {
		return closed, false
	}
	if !fits {
		return ss.literalTooLarge()
	}
	defer clear(ss.cmd) // the password was in there
	_, _, args, err := parseArgs(ss.cmd)
	var user string
	if err == nil {
		user, err = loginUser(args)
	}
	if err != nil {
		return -1, ss.invalid(tag, "Invalid LOGIN command.")
	}
	if refused, ok := ss.admitUser(tag, user, ""); refused {
		return -1, ok
	}
	if !ss.sendOwnID() {
		return closed, false
	}
	ss.out = append(ss.out[:0], tag...)
	ss.out = append(ss.out, " LOGIN "...)
	if !ss.sendAString(tag, args[0].val) {
		return closed, false
	}
	ss.out = append(ss.out, ' ')
	if !ss.sendAString(tag, args[1].val) {
		return closed, false
	}
	ss.out = append(ss.out, "\r\n"...)
	_, err = ss.up.Write(ss.out)
	clear(ss.out)
	if err != nil {
		return closed, false
	}
	return ss.loginResult(tag, credentials{user: user, secret: args[1].val})
}

// sendAString appends s to the pending output as a quoted string, or, if
// it cannot be quoted, sends the pending output with a synchronising
// literal announcement, waits for the upstream's continuation and then
// sends s.
func (ss *session) sendAString(tag string, s []byte) bool {
	if quotable(s) {
		ss.out = append(ss.out, '"')
		for _, c := range s {
			if c == '"' || c == '\\' {
				ss.out = append(ss.out, '\\')
			}
			ss.out = append(ss.out, c)
		}
		ss.out = append(ss.out, '"')
		return true
	}
	ss.out = append(ss.out, '{')
	ss.out = appendInt(ss.out, len(s))
	ss.out = append(ss.out, "}\r\n"...)
	if _, err := ss.up.Write(ss.out); err != nil {
		return false
	}
	clear(ss.out)
	kind, _, err := ss.readUpstreamResponse(tag)
	if err != nil || kind != respContinue {
		return false
	}
	if _, err := ss.up.Write(s); err != nil {
		return false
	}
	ss.out = ss.out[:0]
	return true
}

func appendInt(b []byte, n int) []byte {
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

func quotable(s []byte) bool {
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return len(s) < 1024
}

// admitUser applies max_per_user_ip before a login of user (with SASL
// mechanism mech, or LOGIN) is forwarded. It reports whether the login was
// refused, and whether the session may go on.
func (ss *session) admitUser(tag, user, mech string) (refused, ok bool) {
	if ss.ticket.UserBanned(time.Now(), user) {
		// A user+address ban: the upstream is not asked. The line is not
		// LOGIN FAILED, so fail2ban does not escalate it to the address.
		ss.srv.log.LoginRefused(user, mech, "banned", ss.client.Remote)
		ss.srv.events.Refused("banned_user", true)
		return true, ss.writeClientf("%s NO [AUTHENTICATIONFAILED] Too many failed logins for this user from your address; try again later.\r\n", tag) == nil
	}
	d := ss.ticket.ReserveUser(user)
	ss.noteDryRun(d, user)
	if !d.Refused {
		return false, true
	}
	ss.logRefusal(d, user)
	ss.srv.events.Refused(d.Reason.String(), true)
	return true, ss.writeClientf("%s NO [LIMIT] Too many sessions for this user from your address.\r\n", tag) == nil
}

// authenticate handles AUTHENTICATE (RFC 9051 §6.2.2). The user name is
// learnt from the initial response (SASL-IR, RFC 4959) or the first
// continuation answer of the mechanisms that carry one (see saslUser);
// others pass through with the user unknown.
func (ss *session) authenticate(tag string) (outcome, bool) {
	_, _, args, err := parseArgs(ss.cmd)
	if err != nil || len(args) < 1 || len(args) > 2 || args[0].kind != tokAtom {
		return -1, ss.invalid(tag, "Invalid AUTHENTICATE command.")
	}
	x := &saslExchange{mech: strings.ToUpper(string(args[0].val))}
	defer x.wipe()
	if len(args) == 2 {
		x.response(args[1].val)
		if x.user != "" {
			if refused, ok := ss.admitUser(tag, x.user, x.mech); refused {
				clear(ss.cmd)
				return -1, ok
			}
		}
	}
	if !ss.sendOwnID() {
		clear(ss.cmd)
		return closed, false
	}
	_, err = ss.up.Write(ss.cmd)
	clear(ss.cmd)
	if err != nil {
		return closed, false
	}
	for {
		kind, last, err := ss.relayResponses(tag, true)
		if err != nil {
			return closed, false
		}
		if kind == respTagged {
			ss.pendingTagged = last
			return ss.loginResult(tag, credentials{user: x.user, mech: x.mech, secret: x.secret, cancelled: x.cancelled})
		}
		// A continuation: the client answers with one line.
		line, err := readLine(ss.cr, ss.set.login.MaxLine)
		if err != nil {
			return closed, false
		}
		if bytes.Equal(trimCRLF(line), []byte("*")) {
			x.cancelled = true
		} else if hadUser := x.user != ""; !hadUser {
			if x.response(line); x.user != "" {
				if refused, _ := ss.admitUser(tag, x.user, x.mech); refused {
					clear(line)
					// Cancel the exchange upstream and swallow its answer.
					ss.up.Write([]byte("*\r\n"))
					_, _, err := ss.relayResponses(tag, false)
					return -1, err == nil
				}
			}
		} else {
			x.response(line)
		}
		_, err = ss.up.Write(line)
		clear(line) // SASL payload
		if err != nil {
			return closed, false
		}
	}
}

// credentials are what a LOGIN or AUTHENTICATE presented: the user name
// (empty if the mechanism names none), the mechanism (empty for LOGIN),
// the secret (password or SASL responses, only to recognise a retry of
// the same credentials; never logged), and whether the client cancelled.
type credentials struct {
	user, mech string
	secret     []byte
	cancelled  bool
}

// loginResult reads the tagged result of LOGIN or AUTHENTICATE (unless
// authenticate already has it), classifies it, logs it as courier does,
// applies the auth-failure penalty to authentication failures only, and
// relays it.
func (ss *session) loginResult(tag string, cr credentials) (outcome, bool) {
	last := ss.pendingTagged
	ss.pendingTagged = nil
	if last == nil {
		var err error
		if _, last, err = ss.relayResponses(tag, false); err != nil {
			ss.ticket.CommitUser(false)
			return closed, false
		}
	}
	res := classifyLogin(trimCRLF(last), tag, cr.cancelled)
	s := ss.srv
	s.events.Login(res.reason)
	switch res.class {
	case loginOK:
		ss.ticket.CommitUser(true)
		ss.ticket.LoggedIn()
		ss.ticket.LoginSucceeded(time.Now(), cr.user)
		ss.entry.SetUser(cr.user)
		ss.entry.SetState(conntable.Established)
		s.log.Login(cr.user, ss.client.Remote)
		if ss.writeClient(last) != nil {
			return closed, false
		}
		return loggedIn, true
	case loginAuthFailed:
		ss.ticket.CommitUser(false)
		if !ss.authFailed(cr) {
			return closed, false
		}
	default:
		ss.ticket.CommitUser(false)
		if res.reason == "privacyrequired" {
			s.upstreamProblem(problemPrivacyRequired)
		}
		s.log.LoginRefused(cr.user, cr.mech, res.reason, ss.client.Remote)
	}
	return -1, ss.writeClient(last) == nil
}

// authFailed logs an authentication failure in courier's words and applies
// the penalty: a ban, and a delay before the NO goes out. It reports
// whether the session may go on.
func (ss *session) authFailed(cr credentials) bool {
	s := ss.srv
	now := time.Now()
	var attempt uint64 // 0: unknown, every one counts
	if len(cr.secret) > 0 {
		attempt = limiter.AttemptKey(cr.user, cr.secret)
	}
	s.tracker.LoginFailedFrom(ss.client.Remote.Addr())
	switch {
	case ss.ticket.Retried(now, cr.user, attempt):
		s.log.LoginFailedAgain(cr.user, cr.mech, ss.client.Remote)
	case cr.mech != "":
		s.log.LoginFailedMethod(cr.mech, ss.client.Remote)
	default:
		s.log.LoginFailed(cr.user, ss.client.Remote)
	}
	delay, ban := ss.ticket.LoginFailed(now, cr.user, attempt)
	if ban != nil {
		ss.logBan(ban)
	}
	if delay <= 0 {
		return true
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ss.ctx.Done():
		return false
	}
}

// relayResponses relays upstream responses to the client until the tagged
// response for tag (returned, not written: callers decide when it goes
// out) or, if stopAtContinuation, a continuation request (written).
func (ss *session) relayResponses(tag string, stopAtContinuation bool) (respKind, []byte, error) {
	for {
		kind, line, err := ss.readUpstreamResponse(tag)
		if err != nil {
			return kind, nil, err
		}
		if kind == respTagged {
			if line == nil { // it came with a literal and has been relayed
				return kind, nil, nil
			}
			out, caps := rewriteCaps(nil, trimCRLF(line))
			ss.sawCaps(trimCRLF(line), caps)
			return kind, append(out, '\r', '\n'), nil
		}
		if kind == respContinue && !stopAtContinuation {
			// Unexpected continuation: pass the client's one-line answer on.
			if err := ss.writeClient(line); err != nil {
				return kind, nil, err
			}
			answer, err := readLine(ss.cr, ss.set.login.MaxLine)
			if err != nil {
				return kind, nil, err
			}
			if _, err := ss.up.Write(answer); err != nil {
				return kind, nil, err
			}
			continue
		}
		if line != nil {
			if err := ss.relayLine(trimCRLF(line)); err != nil {
				return kind, nil, err
			}
		}
		if kind == respContinue {
			return kind, nil, nil
		}
	}
}

// maxResponseLiteral bounds a literal in an upstream response before login.
const maxResponseLiteral = 64 << 10

// readUpstreamResponse reads one response. A response whose line ends in a
// literal is relayed to the client as it is read (line, literal, rest) and
// returned as nil; otherwise the line is returned (with CRLF, aliasing a
// reused buffer) for the caller to relay.
func (ss *session) readUpstreamResponse(tag string) (respKind, []byte, error) {
	return ss.readResponse(tag, ss.writeClient)
}

// readUpstreamResponseQuiet reads one response as readUpstreamResponse
// does, but drops a response with literals instead of relaying it: for
// the answers to commands imapgate sent on its own.
func (ss *session) readUpstreamResponseQuiet(tag string) (respKind, []byte, error) {
	return ss.readResponse(tag, func([]byte) error { return nil })
}

func (ss *session) readResponse(tag string, relay func([]byte) error) (respKind, []byte, error) {
	line, err := readLine(ss.ur, upstreamMaxLine)
	if err != nil {
		return respUntagged, nil, err
	}
	kind, _ := classify(line, tag)
	lit, has, err := trailingLiteral(line)
	if err != nil || !has {
		ss.last = append(ss.last[:0], line...)
		return kind, ss.last, nil
	}
	for has {
		if lit.size > maxResponseLiteral {
			return kind, nil, errLiteralTooLong
		}
		if err := relay(line); err != nil {
			return kind, nil, err
		}
		if _, err := io.CopyN(writerFunc(relay), ss.ur, lit.size); err != nil {
			return kind, nil, err
		}
		if line, err = readLine(ss.ur, upstreamMaxLine); err != nil {
			return kind, nil, err
		}
		if lit, has, err = trailingLiteral(line); err != nil {
			return kind, nil, err
		}
	}
	return kind, nil, relay(line)
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
