package limiter

import (
	"hash/maphash"
	"strings"
	"time"
)

// userHash names a user (case-insensitively) in the limiter's tables;
// never 0.
func (l *Limiter) userHash(user string) uint64 {
	return maphash.String(l.seed, strings.ToLower(user)) | 1
}

// LoginSucceeded records a successful login of user from the ticket's
// address: it gives back the new-connection rate tokens the connection
// spent (a flood is what the rates are for, not logins), and counts the
// user towards the address's and prefix's known-good tier.
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
	p := l.policy.Load()
	n := now.UnixNano()
	uh := l.userHash(user)
	l.goodIP.login(t.k, uh, n, &p.KnownGood)
	l.goodPrefix.login(t.pk.addr, uh, n, &p.KnownGood)
}
