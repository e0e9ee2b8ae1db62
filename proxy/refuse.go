package proxy

import (
	"fmt"
	"net/netip"
	"time"

	"imapgate/courierlog"
	"imapgate/internal/throttle"
	"imapgate/limiter"
)

// byeText is what a refused client's mail program shows, per limit.
var byeText = [limiter.NumReasons]string{
	limiter.Deny:            "Access denied.",
	limiter.NotAllowed:      "Access denied.",
	limiter.Banned:          "Too many failed logins from your address, please try again later.",
	limiter.RatePerIP:       "Too many new connections from your address, please slow down.",
	limiter.RatePerPrefix:   "Too many new connections from your network, please slow down.",
	limiter.MaxConnections:  "Server busy, please try again later.",
	limiter.MaxPerIP:        "Too many connections from your address.",
	limiter.MaxPerPrefix:    "Too many connections from your network.",
	limiter.MaxPreauthPerIP: "Too many unauthenticated connections from your address.",
	limiter.MaxPerUserIP:    "Too many sessions for this user from your address.",
}

// report records a limiter decision; it is the one place refusals are
// reported. Each limit in dry-run mode that would have refused gets its
// line and its count, and a refusal its line in courier's shape
// (throttled per limit), its count and the admin tracker's note. afterTLS
// says whether the client was told inside the protocol.
func (s *Server) report(d limiter.Decision, afterTLS bool) { s.reportAt(d, afterTLS, time.Now()) }

// reportAt is report for a decision made at now, which times the log
// line's throttle (the accept loop's refusals read the clock once).
func (s *Server) reportAt(d limiter.Decision, afterTLS bool, now time.Time) {
	for r := limiter.Reason(0); d.WouldRefuse != 0 && r < limiter.NumReasons; r++ {
		if d.WouldRefuse&(1<<r) != 0 {
			s.events.WouldRefuse(r.String())
			s.logLimit(d, r, int(d.WouldLimit[r]), " (dry run: not refused)", now)
		}
	}
	if !d.Refused {
		return
	}
	s.tracker.RefusedFrom(d.Addr)
	if s.onRefused != nil {
		s.onRefused(d.Addr, d.Reason, now)
	}
	s.logLimit(d, d.Reason, d.Limit, "", now)
	s.events.Refused(d.Reason.String(), afterTLS)
}

// flushSuppressed writes the "N callbacks suppressed" lines that no later
// line has carried (the flood stopped): without it, a flood's last
// interval would never show in the log how much it hid.
func (s *Server) flushSuppressed(now time.Time) {
	for r, th := range s.refusalLog {
		if n := th.Flush(now); n > 0 {
			s.log.Message(courierlog.Warning, throttle.Suppressed(limiter.Reason(r).String(), n))
		}
	}
	if n := s.timeoutLog.Flush(now); n > 0 {
		s.log.Message(courierlog.Warning, throttle.Suppressed("handshake timeout", n))
	}
}

// handshakeTimedOut logs that the client at addr never completed its TLS
// handshake in time, throttled as the refusal lines are (50 per 5 s, then
// "handshake timeout: N callbacks suppressed" with the next line).
func (s *Server) handshakeTimedOut(addr netip.Addr) {
	ok, suppressed := s.timeoutLog.Allow(time.Now())
	if suppressed > 0 {
		s.log.Message(courierlog.Warning, throttle.Suppressed("handshake timeout", suppressed))
	}
	if ok {
		s.log.Message(courierlog.Debug, fmt.Sprintf("ip=[%s], TLS handshake timed out.", courierlog.Addr(addr)))
	}
}

// refuseWithBye completes the TLS handshake (under the table's handshake
// timeout) and tells the client why it is refused.
func (c *conn) refuseWithBye(d limiter.Decision) {
	c.srv.report(d, true)
	if c.handshake() {
		c.sayBye(d)
	}
}

// sayBye tells a client refused by d, over its finished handshake, why,
// and closes the connection.
func (c *conn) sayBye(d limiter.Decision) {
	c.raw.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.writeClient(fmt.Appendf(nil, "* BYE [UNAVAILABLE] %s\r\n", byeText[d.Reason]))
	c.tc.Close()
}

// logLimit writes the line for limit r of decision d, with suffix: the
// refusal in courier's format (couriertcpd's exact lines for MAXPERIP and
// MAXDAEMONS, the same shape for the others), or a dry-run line.
func (s *Server) logLimit(d limiter.Decision, r limiter.Reason, limit int, suffix string, now time.Time) {
	log, a := s.log, d.Addr
	ok, suppressed := s.refusalLog[r].Allow(now)
	if suppressed > 0 {
		log.Message(courierlog.Warning, throttle.Suppressed(r.String(), suppressed))
	}
	if !ok {
		return
	}
	prefix := " (" + d.Prefix.String() + ")" // names a's network, for the per-network lines
	switch r {
	case limiter.MaxPerIP:
		if suffix == "" {
			log.MaxPerIP(a)
			return
		}
		log.Refused(courierlog.Alert, "Maximum connection limit reached", a, suffix)
	case limiter.MaxConnections:
		if suffix == "" {
			log.MaxDaemons(limit)
			return
		}
		log.Message(courierlog.Alert, fmt.Sprintf("%d maximum active connections.%s", limit, suffix))
	case limiter.MaxPreauthPerIP:
		log.Refused(courierlog.Alert, "Maximum pre-login connection limit reached", a, suffix)
	case limiter.MaxPerPrefix:
		log.Refused(courierlog.Alert, "Maximum network connection limit reached", a, prefix+suffix)
	case limiter.MaxPerUserIP:
		log.Refused(courierlog.Alert, "Maximum connection limit per user reached", a,
			", user="+string(courierlog.AppendUser(nil, d.User))+suffix)
	case limiter.RatePerIP:
		log.Refused(courierlog.Warning, "Connection rate limit reached", a, suffix)
	case limiter.RatePerPrefix:
		log.Refused(courierlog.Warning, "Network connection rate limit reached", a, prefix+suffix)
	case limiter.Banned:
		// Not "after failed logins": ctl ban and a cluster's bans land here too.
		log.Refused(courierlog.Warning, "Connection refused, address banned", a, suffix)
	case limiter.Deny:
		log.Refused(courierlog.Info, "Connection denied", a, suffix)
	case limiter.NotAllowed:
		log.Refused(courierlog.Info, "Connection not allowed", a, suffix)
	}
}

// logBan records that failed logins started a ban.
func (c *conn) logBan(b *limiter.Ban) {
	c.srv.events.Ban()
	what := "address"
	switch {
	case b.User != "" && b.Narrowed:
		// Logged with AppendUser's escaping: the name is the client's.
		what = "user " + string(courierlog.AppendUser(nil, b.User)) + " (others log in from this address)"
	case b.User != "":
		what = "user " + string(courierlog.AppendUser(nil, b.User))
	case b.Key.Bits() < b.Key.Addr().BitLen():
		what = "network " + b.Key.String()
	}
	c.srv.log.Refused(courierlog.Warning, fmt.Sprintf("Too many failed logins (%d), %s banned until %s",
		b.Failures, what, b.Until.UTC().Format(time.RFC3339)), c.client.Remote.Addr(), "")
}
