package proxy

import (
	"fmt"
	"net/netip"
	"time"

	"imapgate/courierlog"
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

// refuseWithBye completes the TLS handshake (under the table's handshake
// timeout) and tells the client why it is refused.
func (ss *session) refuseWithBye(d limiter.Decision) {
	ss.logRefusal(d, "")
	ss.srv.events.Refused(d.Reason.String(), true)
	if !ss.handshake() {
		return
	}
	ss.raw.SetWriteDeadline(time.Now().Add(2 * time.Second))
	ss.writeClientf("* BYE [UNAVAILABLE] %s\r\n", byeText[d.Reason])
	ss.tc.Close()
}

// logRefusal writes the refusal in courier's format: couriertcpd's exact
// lines for MAXPERIP and MAXDAEMONS, the same shape for the others.
func (ss *session) logRefusal(d limiter.Decision, user string) {
	ss.srv.refuseLog(d, ss.client.Remote.Addr(), user)
}

// refusedBeforeTLS records a refusal that closed the connection before the
// handshake: log line, top-N tracker, counter.
func (s *Server) refusedBeforeTLS(d limiter.Decision, a netip.Addr) {
	s.refuseLog(d, a, "")
	s.events.Refused(d.Reason.String(), false)
}

// refuseLog records a refusal of a: the top-N tracker and the log line.
func (s *Server) refuseLog(d limiter.Decision, a netip.Addr, user string) {
	s.tracker.RefusedFrom(a)
	if s.onRefused != nil {
		s.onRefused(a, d.Reason)
	}
	s.logLimit(a, d.Reason, d.Limit, user, "")
}

// noteDryRun logs and counts each limit that would have refused.
func (ss *session) noteDryRun(d limiter.Decision, user string) {
	if d.WouldRefuse == 0 {
		return
	}
	ss.srv.limiter.NoteWouldRefuse(d.WouldRefuse)
	lim := ss.srv.limiter.LimitsFor(ss.client.Remote.Addr())
	for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
		if d.WouldRefuse&(1<<r) != 0 {
			ss.srv.events.WouldRefuse(r.String())
			ss.srv.logLimit(ss.client.Remote.Addr(), r, limitValue(lim, r), user, " (dry run: not refused)")
		}
	}
}

func limitValue(l limiter.Limits, r limiter.Reason) int {
	switch r {
	case limiter.MaxConnections:
		return l.MaxConnections
	case limiter.MaxPerIP:
		return l.MaxPerIP
	case limiter.MaxPerPrefix:
		return l.MaxPerPrefix
	case limiter.MaxPreauthPerIP:
		return l.MaxPreauthPerIP
	case limiter.MaxPerUserIP:
		return l.MaxPerUserIP
	}
	return 0
}

func (s *Server) logLimit(a netip.Addr, r limiter.Reason, limit int, user, suffix string) {
	log := s.log
	ok, suppressed := s.refusalLog[r].Allow(time.Now())
	if suppressed > 0 {
		log.Message(courierlog.Warning, fmt.Sprintf("%s: %d callbacks suppressed", r, suppressed))
	}
	if !ok {
		return
	}
	// prefix names a's network, for the per-network lines.
	prefix := func() string {
		if s.limiter == nil {
			return ""
		}
		return " (" + s.limiter.Policy().PrefixOf(a.Unmap()).String() + ")"
	}
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
		log.Refused(courierlog.Alert, "Maximum network connection limit reached", a, prefix()+suffix)
	case limiter.MaxPerUserIP:
		log.Refused(courierlog.Alert, "Maximum connection limit per user reached", a,
			", user="+string(courierlog.AppendUser(nil, user))+suffix)
	case limiter.RatePerIP:
		log.Refused(courierlog.Warning, "Connection rate limit reached", a, suffix)
	case limiter.RatePerPrefix:
		log.Refused(courierlog.Warning, "Network connection rate limit reached", a, prefix()+suffix)
	case limiter.Banned:
		log.Refused(courierlog.Warning, "Connection refused after too many failed logins", a, suffix)
	case limiter.Deny:
		log.Refused(courierlog.Info, "Connection denied", a, suffix)
	case limiter.NotAllowed:
		log.Refused(courierlog.Info, "Connection not allowed", a, suffix)
	}
}

// logBan records that failed logins started a ban.
func (ss *session) logBan(b *limiter.Ban) {
	ss.srv.events.Ban()
	what := "address"
	if b.Key.Bits() < b.Key.Addr().BitLen() {
		what = "network " + b.Key.String()
	}
	ss.srv.log.Refused(courierlog.Warning, fmt.Sprintf("Too many failed logins (%d), %s banned until %s",
		b.Failures, what, b.Until.UTC().Format(time.RFC3339)), ss.client.Remote.Addr(), "")
}
