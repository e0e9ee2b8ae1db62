package limiter

import "time"

// LoginSucceeded records a successful login of user from the ticket's
// address: it gives back the new-connection rate tokens the connection
// spent (a flood is what the rates are for, not logins).
func (t *Ticket) LoginSucceeded(now time.Time, user string) {
	if t.l == nil || t.exempt {
		return
	}
	l := t.l
	if t.spentIP != 0 {
		l.rateIP.refund(t.k, t.spentIP, now)
		t.spentIP = 0
	}
	if t.spentPrefix != 0 {
		l.ratePrefix.refund(t.pk.addr, t.spentPrefix, now)
		t.spentPrefix = 0
	}
}
