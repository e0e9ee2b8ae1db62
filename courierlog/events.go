package courierlog

import (
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Logger formats courier's events and hands them to a Sink.
type Logger struct {
	sink Sink
	// tls appends ", starttls=1" where courier does for TLS sessions
	// (every imapd-ssl session: its start script exports IMAP_TLS=1).
	tls bool
	// loginStartTLS also appends it to LOGIN lines, as courier-imap
	// >= 5.2.6 does; Debian 12's 5.0.13 does not.
	loginStartTLS bool
	// noSessions drops the per-session lines (Connection, LOGIN, LOGOUT…):
	// in exec mode courier writes them itself, with the real address. The
	// failed and refused logins' lines stay imapgate's (see the exec
	// upstream: courier cannot tell a retry, nor knows imapgate's bans).
	noSessions bool
}

// WithoutSessionLines returns a Logger that writes everything but the
// per-session lines that courier itself writes in exec mode (Connection,
// LOGIN, LOGOUT, TIMEOUT, Disconnected…); LOGIN FAILED, LOGIN FAILED
// AGAIN and LOGIN REFUSED are still written.
func (l *Logger) WithoutSessionLines() *Logger {
	c := *l
	c.noSessions = true
	return &c
}

// session reports whether per-session lines are written.
func (l *Logger) session() bool { return l != nil && !l.noSessions }

// Options configure a Logger.
type Options struct {
	// TLS marks sessions as TLS sessions (", starttls=1"). imapgate's client
	// side is always TLS, so its Logger sets it.
	TLS bool
	// LoginStartTLS adds ", starttls=1" to LOGIN lines (courier >= 5.2.6).
	LoginStartTLS bool
}

// New returns a Logger writing to sink; a nil sink discards.
func New(sink Sink, opts Options) *Logger {
	if sink == nil {
		sink = Discard
	}
	return &Logger{sink: sink, tls: opts.TLS, loginStartTLS: opts.LoginStartTLS}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// emit builds one line with fill and writes it; the buffer is pooled so a
// log line costs no allocation on the connection path.
func (l *Logger) emit(p Priority, fill func(b []byte) []byte) {
	if l == nil {
		return
	}
	bp := bufPool.Get().(*[]byte)
	b := fill((*bp)[:0])
	l.sink.Write(p, b)
	*bp = b
	bufPool.Put(bp)
}

func (l *Logger) appendTLS(b []byte) []byte {
	if l.tls {
		b = append(b, ", starttls=1"...)
	}
	return b
}

// prefixes are courierlogger's: a recognised prefix sets the priority and
// is stripped; anything else is logged at info unchanged ("NOTICE: …").
var prefixes = []struct {
	p      Priority
	prefix string
}{{Err, "ERR:"}, {Warning, "WARN:"}, {Alert, "ALERT:"}, {Crit, "CRIT:"}, {Debug, "DEBUG:"}, {Info, "INFO:"}}

// CourierPriority splits a line a courier program wrote to stderr as
// courierlogger does: a recognised prefix ("ERR:", "INFO:", …) gives the
// priority and goes, with the spaces after it; without one the line is
// info, unchanged.
func CourierPriority(line string) (Priority, string) {
	for _, x := range prefixes {
		if len(line) >= len(x.prefix) && line[:len(x.prefix)] == x.prefix {
			return x.p, trimLeftSpace(line[len(x.prefix):])
		}
	}
	return Info, line
}

// CourierLine logs a line a courier program wrote to stderr, as
// courierlogger does (exec upstream mode).
func (l *Logger) CourierLine(line string) {
	p, line := CourierPriority(line)
	if len(line) > 511 { // courierlogger's line buffer
		line = line[:511]
	}
	l.emit(p, func(b []byte) []byte { return append(b, line...) })
}

func trimLeftSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	return s
}

// Message logs text for events courier has no line for.
func (l *Logger) Message(p Priority, msg string) {
	l.emit(p, func(b []byte) []byte { return append(b, msg...) })
}

// Connection: a session starts (greeting sent, after the TLS handshake).
func (l *Logger) Connection(client netip.AddrPort) {
	if !l.session() {
		return
	}
	l.emit(Debug, func(b []byte) []byte {
		b = append(b, "Connection, "...)
		return appendIPPort(b, client)
	})
}

// Login: LOGIN or AUTHENTICATE succeeded.
func (l *Logger) Login(user string, client netip.AddrPort) {
	if !l.session() {
		return
	}
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGIN, user="...)
		b = AppendUser(b, user)
		b = append(b, ", "...)
		b = appendIPPort(b, client)
		b = append(b, ", protocol=IMAP"...)
		if l.loginStartTLS {
			b = l.appendTLS(b)
		}
		return b
	})
}

// LoginFailed: LOGIN failed for a known user name.
func (l *Logger) LoginFailed(user string, client netip.AddrPort) {
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGIN FAILED, user="...)
		b = AppendUser(b, user)
		b = append(b, ", "...)
		return appendIPPort(b, client)
	})
}

// LoginFailedMethod: AUTHENTICATE failed; courier names the mechanism, not
// the user.
func (l *Logger) LoginFailedMethod(method string, client netip.AddrPort) {
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGIN FAILED, method="...)
		b = AppendUser(b, method)
		b = append(b, ", "...)
		return appendIPPort(b, client)
	})
}

// LoginRefused: a LOGIN or AUTHENTICATE was refused for a reason other
// than the credentials: the upstream's response code in lower case
// ("limit", "unavailable", "privacyrequired", …), "bad" (the upstream did
// not accept the command), "cancelled" (the client cancelled
// AUTHENTICATE), or imapgate's own "banned" (this user is banned from this
// address after failed logins). Courier has no such line. It is shaped
// like courier's LOGIN FAILED (user= or method=, then ip=[…], port=[…]) but
// says REFUSED, so that fail2ban's courier-auth filter, which matches
// "LOGIN FAILED, " only, does not ban an address for it.
func (l *Logger) LoginRefused(user, method, reason string, client netip.AddrPort) {
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGIN REFUSED, "...)
		b = appendWho(b, user, method)
		b = appendIPPort(b, client)
		b = append(b, ", reason="...)
		return AppendUser(b, reason)
	})
}

// LoginFailedAgain: a failed login that repeats the credentials of one
// that failed from the same address shortly before (a device retrying a
// stale password). Courier would write LOGIN FAILED again; imapgate counts
// such a retry once toward its penalty and words the repeat so that
// fail2ban's courier-auth filter does not count it either: one stale phone
// must not get its whole office banned.
func (l *Logger) LoginFailedAgain(user, method string, client netip.AddrPort) {
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGIN FAILED AGAIN, "...)
		b = appendWho(b, user, method)
		return appendIPPort(b, client)
	})
}

// appendWho writes "user=U, " or, for an AUTHENTICATE whose mechanism
// names no user, courier's "method=M, ".
func appendWho(b []byte, user, method string) []byte {
	if user != "" || method == "" {
		b = append(b, "user="...)
		b = AppendUser(b, user)
	} else {
		b = append(b, "method="...)
		b = AppendUser(b, method)
	}
	return append(b, ", "...)
}

// End says how an authenticated session ended, as courier's bye_msg words it.
type End string

// Courier's words for the end of an authenticated session.
const (
	EndLogout       End = "LOGOUT"
	EndDisconnected End = "DISCONNECTED"
	EndTimeout      End = "TIMEOUT"
	EndShutdown     End = "NOTICE: Disconnected during shutdown by signal"
)

// Counts are the byte counts of a session. Headers and Body are what
// courier counts of FETCHed message parts; the proxy relays opaquely after
// login and writes them as 0, as courier does when nothing was fetched.
type Counts struct {
	Rcvd, Sent    uint64
	Headers, Body uint64
	Elapsed       time.Duration
}

func seconds(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d / time.Second)
}

// SessionEnd: an authenticated session ended (LOGOUT, DISCONNECTED,
// TIMEOUT, or shut down by signal).
func (l *Logger) SessionEnd(how End, user string, client netip.AddrPort, c Counts) {
	if !l.session() {
		return
	}
	l.emit(Info, func(b []byte) []byte {
		b = append(b, how...)
		b = append(b, ", user="...)
		b = AppendUser(b, user)
		b = append(b, ", "...)
		b = appendIPPort(b, client)
		b = appendUint(b, "headers", c.Headers)
		b = appendUint(b, "body", c.Body)
		b = appendUint(b, "rcvd", c.Rcvd)
		b = appendUint(b, "sent", c.Sent)
		b = appendUint(b, "time", seconds(c.Elapsed))
		return l.appendTLS(b)
	})
}

// LogoutPreauth: LOGOUT before login. Courier's imaplogin writes no time
// and no starttls field on this line.
func (l *Logger) LogoutPreauth(client netip.AddrPort, c Counts) {
	if !l.session() {
		return
	}
	l.emit(Info, func(b []byte) []byte {
		b = append(b, "LOGOUT, "...)
		b = appendIPPort(b, client)
		b = appendUint(b, "rcvd", c.Rcvd)
		return appendUint(b, "sent", c.Sent)
	})
}

// Disconnected: the client went away, or was cut off, before login.
func (l *Logger) Disconnected(client netip.AddrPort, elapsed time.Duration) {
	if !l.session() {
		return
	}
	l.emit(Debug, func(b []byte) []byte {
		b = append(b, "Disconnected, "...)
		b = appendIPPort(b, client)
		b = appendUint(b, "time", seconds(elapsed))
		return l.appendTLS(b)
	})
}

// ShutdownPreauth: a session still in the login phase closed at shutdown.
func (l *Logger) ShutdownPreauth(client netip.AddrPort, elapsed time.Duration) {
	if !l.session() {
		return
	}
	l.emit(Info, func(b []byte) []byte {
		b = append(b, EndShutdown...)
		b = append(b, ", "...)
		b = appendIPPort(b, client)
		b = appendUint(b, "time", seconds(elapsed))
		return l.appendTLS(b)
	})
}

// MaxPerIP is couriertcpd's line for a MAXPERIP refusal, byte for byte:
// the address without brackets, at alert priority.
func (l *Logger) MaxPerIP(a netip.Addr) {
	l.emit(Alert, func(b []byte) []byte {
		b = append(b, "Maximum connection limit reached for "...)
		return AppendAddr(b, a)
	})
}

// MaxDaemons is couriertcpd's line when every slot is in use.
func (l *Logger) MaxDaemons(n int) {
	l.emit(Alert, func(b []byte) []byte {
		b = strconv.AppendInt(b, int64(n), 10)
		return append(b, " maximum active connections."...)
	})
}

// Refused logs a refusal for which courier has no line of its own, in the
// same shape as its limit line: "<what> for <addr><detail>".
func (l *Logger) Refused(p Priority, what string, a netip.Addr, detail string) {
	l.emit(p, func(b []byte) []byte {
		b = append(b, what...)
		b = append(b, " for "...)
		b = AppendAddr(b, a)
		return append(b, detail...)
	})
}
