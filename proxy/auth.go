package proxy

import (
	"bytes"
	"strings"
	"time"

	"imapgate/conntable"
	"imapgate/limiter"
)

// login handles LOGIN: the command is read whole here (the proxy answers
// its synchronising literals), checked against the per-user limit, then
// re-encoded for the upstream. Only the user name is kept.
func (lp *loginPhase) login(tag string) outcome {
	if o := lp.readCommand(); o != carryOn {
		return o
	}
	defer clear(lp.cmd) // the password was in there
	_, _, args, err := parseArgs(lp.cmd)
	var user string
	if err == nil {
		user, err = loginUser(args)
	}
	if err != nil {
		return lp.invalid(tag, "Invalid LOGIN command.")
	}
	if refused, o := lp.admitUser(tag, user, ""); refused {
		return o
	}
	if !lp.sendOwnID() {
		return closed
	}
	lp.out = append(lp.out[:0], tag...)
	lp.out = append(lp.out, " LOGIN "...)
	if !lp.sendAString(tag, args[0].val) {
		return closed
	}
	lp.out = append(lp.out, ' ')
	if !lp.sendAString(tag, args[1].val) {
		return closed
	}
	lp.out = append(lp.out, "\r\n"...)
	_, err = lp.c.up.Write(lp.out)
	clear(lp.out)
	if err != nil {
		return closed
	}
	return lp.loginResult(tag, nil, credentials{user: user, secret: args[1].val})
}

// sendAString appends s to the pending output as a quoted string, or, if
// it cannot be quoted, sends the pending output with a synchronising
// literal announcement, waits for the upstream's continuation and then
// sends s.
func (lp *loginPhase) sendAString(tag string, s []byte) bool {
	if quotable(s) {
		lp.out = append(lp.out, '"')
		for _, c := range s {
			if c == '"' || c == '\\' {
				lp.out = append(lp.out, '\\')
			}
			lp.out = append(lp.out, c)
		}
		lp.out = append(lp.out, '"')
		return true
	}
	lp.out = append(lp.out, '{')
	lp.out = appendInt(lp.out, len(s))
	lp.out = append(lp.out, "}\r\n"...)
	if _, err := lp.c.up.Write(lp.out); err != nil {
		return false
	}
	clear(lp.out)
	kind, _, err := lp.readUpstreamResponse(tag)
	if err != nil || kind != respContinue {
		return false
	}
	if _, err := lp.c.up.Write(s); err != nil {
		return false
	}
	lp.out = lp.out[:0]
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
// refused, and if so, what answering the refusal came to.
func (lp *loginPhase) admitUser(tag, user, mech string) (refused bool, o outcome) {
	c, s := lp.c, lp.c.srv
	if c.ticket.UserBanned(time.Now(), user) {
		// A user+address ban: the upstream is not asked. The line is not
		// LOGIN FAILED, so fail2ban does not escalate it to the address.
		s.log.LoginRefused(user, mech, "banned", c.client.Remote)
		s.events.Refused("banned_user", true)
		return true, onlyIf(lp.writeClientf("%s NO [AUTHENTICATIONFAILED] Too many failed logins for this user from your address; try again later.\r\n", tag))
	}
	d := c.ticket.ReserveUser(user)
	s.report(d, true)
	if !d.Refused {
		return false, carryOn
	}
	return true, onlyIf(lp.writeClientf("%s NO [LIMIT] Too many sessions for this user from your address.\r\n", tag))
}

// authenticate handles AUTHENTICATE (RFC 9051 §6.2.2). The user name is
// learnt from the initial response (SASL-IR, RFC 4959) or the first
// continuation answer of the mechanisms that carry one (see saslUser);
// others pass through with the user unknown.
func (lp *loginPhase) authenticate(tag string) outcome {
	_, _, args, err := parseArgs(lp.cmd)
	if err != nil || len(args) < 1 || len(args) > 2 || args[0].kind != tokAtom {
		return lp.invalid(tag, "Invalid AUTHENTICATE command.")
	}
	x := &saslExchange{mech: strings.ToUpper(string(args[0].val))}
	defer x.wipe()
	if len(args) == 2 {
		x.response(args[1].val)
		if x.user != "" {
			if refused, o := lp.admitUser(tag, x.user, x.mech); refused {
				clear(lp.cmd)
				return o
			}
		}
	}
	if !lp.sendOwnID() {
		clear(lp.cmd)
		return closed
	}
	_, err = lp.c.up.Write(lp.cmd)
	clear(lp.cmd)
	if err != nil {
		return closed
	}
	for {
		kind, last, err := lp.relayResponses(tag, continueStop)
		if err != nil {
			return closed
		}
		if kind == respTagged {
			return lp.loginResult(tag, last, credentials{user: x.user, mech: x.mech, secret: x.secret, cancelled: x.cancelled})
		}
		// A continuation: the client answers with one line.
		line, err := readLine(lp.cr, lp.set.Login.MaxLine)
		if err != nil {
			return closed
		}
		if bytes.Equal(trimCRLF(line), []byte("*")) {
			x.cancelled = true
		} else if hadUser := x.user != ""; !hadUser {
			if x.response(line); x.user != "" {
				if refused, _ := lp.admitUser(tag, x.user, x.mech); refused {
					clear(line)
					// Cancel the exchange upstream and swallow its answer.
					lp.c.up.Write([]byte("*\r\n"))
					_, _, err := lp.relayResponses(tag, continueRelay)
					return onlyIf(err)
				}
			}
		} else {
			x.response(line)
		}
		_, err = lp.c.up.Write(line)
		clear(line) // SASL payload
		if err != nil {
			return closed
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

// loginResult reads the tagged result of LOGIN or AUTHENTICATE (unless the
// caller has it in last), classifies it, logs it as courier does, applies
// the auth-failure penalty to authentication failures only, and relays it.
func (lp *loginPhase) loginResult(tag string, last []byte, cr credentials) outcome {
	c, s := lp.c, lp.c.srv
	if last == nil {
		var err error
		// LOGIN went whole (its literals answered by the upstream as it
		// went): a continuation now is out of protocol.
		if _, last, err = lp.relayResponses(tag, continueRefuse); err != nil {
			c.ticket.CommitUser(false)
			return closed
		}
	}
	res := classifyLogin(trimCRLF(last), tag, cr.cancelled)
	if res.class == loginAuthFailed && lp.loginDisabled {
		// Courier with IMAP_TLS_REQUIRED=1 answers "NO STARTTLS
		// required", without [PRIVACYREQUIRED]: the hop is refused, and
		// counting it against the client would ban a whole office for
		// the upstream's configuration.
		res = loginOutcome{loginRefused, "privacyrequired"}
	}
	s.events.Login(res.reason)
	switch res.class {
	case loginOK:
		c.ticket.CommitUser(true)
		c.ticket.LoggedIn()
		c.ticket.LoginSucceeded(time.Now(), cr.user)
		c.entry.SetUser(cr.user)
		c.entry.SetState(conntable.Established)
		s.log.Login(cr.user, c.client.Remote)
		if c.writeClient(last) != nil {
			return closed
		}
		return loggedIn
	case loginAuthFailed:
		c.ticket.CommitUser(false)
		if !lp.authFailed(cr) {
			return closed
		}
	default:
		c.ticket.CommitUser(false)
		if res.reason == "privacyrequired" {
			s.upstreamProblem(problemPrivacyRequired)
		}
		s.log.LoginRefused(cr.user, cr.mech, res.reason, c.client.Remote)
	}
	return onlyIf(c.writeClient(last))
}

// authFailed logs an authentication failure in courier's words and applies
// the penalty: a ban, and a delay before the NO goes out. It reports
// whether the session may go on.
func (lp *loginPhase) authFailed(cr credentials) bool {
	c, s := lp.c, lp.c.srv
	now := time.Now()
	var attempt uint64 // 0: unknown, every one counts
	if len(cr.secret) > 0 {
		attempt = limiter.AttemptKey(cr.user, cr.secret)
	}
	s.tracker.LoginFailedFrom(c.client.Remote.Addr())
	switch {
	case c.ticket.Retried(now, cr.user, attempt):
		s.log.LoginFailedAgain(cr.user, cr.mech, c.client.Remote)
	case cr.mech != "":
		s.log.LoginFailedMethod(cr.mech, c.client.Remote)
	default:
		s.log.LoginFailed(cr.user, c.client.Remote)
	}
	delay, ban := c.ticket.LoginFailed(now, cr.user, attempt)
	if ban != nil {
		c.logBan(ban)
	}
	if delay <= 0 {
		return true
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-lp.ctx.Done():
		return false
	}
}
