package limiter

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// attemptSecret keys AttemptKey: made at start, so attempt keys mean
// nothing outside the process, unless a cluster shares one
// (SetAttemptSecret), so that replicas recognise each other's retries.
var attemptSecret atomic.Pointer[[]byte]

func init() {
	b := make([]byte, 32)
	rand.Read(b)
	attemptSecret.Store(&b)
}

// SetAttemptSecret replaces the key of AttemptKey (a cluster's shared
// one). Attempts already recorded under the old key count again once.
func SetAttemptSecret(b []byte) {
	b = append([]byte(nil), b...)
	attemptSecret.Store(&b)
}

// AttemptKey returns a keyed hash (HMAC-SHA256 with a random per-process
// key, truncated to 64 bits) of user and secret, so a retry of the same
// credentials can be recognised without keeping them. secret is the
// password or the whole SASL response. User names are compared
// case-insensitively. The result is never 0.
func AttemptKey(user string, secret []byte) uint64 {
	user = strings.ToLower(user)
	m := hmac.New(sha256.New, *attemptSecret.Load())
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(user)))
	m.Write(n[:])
	m.Write([]byte(user))
	m.Write(secret)
	var sum [sha256.Size]byte
	return max(binary.BigEndian.Uint64(m.Sum(sum[:0])), 1)
}

// userHash names a user (case-insensitively) in the limiter's tables;
// never 0.
func (l *Limiter) userHash(user string) uint64 {
	return maphash.String(l.seed, strings.ToLower(user)) | 1
}

// LoginFailed records an authentication failure (wrong user or password
// only) of user from the ticket's address; attempt is AttemptKey(user,
// secret), or 0 if unknown (then it counts). It returns how long to hold
// the NO answer, and the ban it started, if any; see Penalty for the rules.
// The account is never locked, and exempt addresses are never penalised.
func (t *Ticket) LoginFailed(now time.Time, user string, attempt uint64) (delay time.Duration, ban *Ban) {
	if t.none() || t.exempt {
		return 0, nil
	}
	l := t.l
	p := l.policy()
	pen := &p.Penalty
	if !pen.on() {
		return 0, nil
	}
	if l.cl.s != nil {
		if delay, ban, ok := t.loginFailedCluster(now, user, attempt, pen); ok {
			return delay, ban
		}
	}
	n := now.UnixNano()
	uh := l.userHash(user)
	tier := p.KnownGood.MinUsers > 0
	shared := l.goodIP.shared(t.k, uh, n, int64(pen.Window), tier)
	prefixGood := tier && l.goodPrefix.good(t.pk.addr, n)

	f := l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	uk, ak := userFailKey(t.addr, uh), prefixFailKey(hostPrefix(t.addr))
	ur, ar := f.record(uk, n, pen.Window), f.record(ak, n, pen.Window)
	counted := attempt == 0 || !ur.seenAttempt(attempt)
	if counted {
		ur.count++
		ar.count++
		users := ar.addUser(uh)
		ban = f.decide(t, pen, user, uh, n, ur.count, ar.count, users, shared)
		if pen.PrefixFailures > 0 {
			pk := prefixFailKey(t.prefix)
			pr := f.record(pk, n, pen.Window)
			pr.count++
			if pusers := pr.addUser(uh); ban == nil && !prefixGood &&
				int(pr.count) >= pen.PrefixFailures && pusers >= pen.MinUsers {
				ban = f.banKey(t.prefix, n, pen.BanTime, int(pr.count))
			}
			f.lru.Add(pk, pr)
		}
	}
	f.lru.Add(uk, ur)
	f.lru.Add(ak, ar)
	count := ar.count
	if shared {
		count = ur.count
	}
	if pen.Delay > 0 && count > 1 {
		delay = min(time.Duration(count-1)*pen.Delay, pen.MaxDelay)
	}
	return delay, ban
}

// Retried reports whether attempt (AttemptKey of user and secret) already
// failed for user from the ticket's address within the penalty window: a
// device retrying credentials that failed before. LoginFailed does not
// count such a retry again; the caller words its log line so that fail2ban
// does not count it either. It changes nothing.
func (t *Ticket) Retried(now time.Time, user string, attempt uint64) bool {
	if t.none() || attempt == 0 {
		return false
	}
	if t.l.cl.s != nil && !t.exempt && t.l.policy().Penalty.on() {
		if res, ok := t.failShared(now, user, attempt); ok {
			return res.Retried
		}
	}
	pen := &t.l.policy().Penalty
	f := t.l.fails
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.lru.Peek(userFailKey(t.addr, t.l.userHash(user)))
	return ok && now.UnixNano()-r.start <= int64(pen.Window) && r.hasAttempt(attempt)
}

// narrowMinFailures: a ban narrowed to a user needs this many of the
// user's own failures in the window, so a user whose one device retries a
// stale password (one failure, however many retries) is never its target.
const narrowMinFailures = 3

// decide applies the address and user rules of Penalty to a counted
// failure: userCount and addrCount failures in the window, spanning users
// distinct users. The lock is held.
func (f *failTable) decide(t *Ticket, pen *Penalty, user string, uh uint64, n int64, userCount, addrCount int32, users int, shared bool) *Ban {
	switch {
	case pen.SprayFailures > 0 && int(addrCount) >= pen.SprayFailures:
		return f.banKey(hostPrefix(t.addr), n, pen.BanTime, int(addrCount))
	case pen.Failures > 0 && int(addrCount) >= pen.Failures && users >= pen.MinUsers:
		if !shared {
			return f.banKey(hostPrefix(t.addr), n, pen.BanTime, int(addrCount))
		}
		if userCount >= narrowMinFailures {
			if b := f.banUser(t.addr, user, uh, n, pen.BanTime, int(addrCount)); b != nil {
				b.Narrowed = true
				return b
			}
		}
	}
	if pen.UserFailures > 0 && int(userCount) >= pen.UserFailures {
		return f.banUser(t.addr, user, uh, n, pen.BanTime, int(userCount))
	}
	return nil
}

// LoginSucceeded records a successful login of user from the ticket's
// address: it gives back the new-connection rate tokens the connection
// spent (a flood is what the rates are for, not logins), counts the user
// towards the address's and prefix's known-good tier and towards the
// address being shared (which narrows its bans), and forgets the user's
// failures from this address.
func (t *Ticket) LoginSucceeded(now time.Time, user string) {
	if t.none() || t.exempt {
		return
	}
	l := t.l
	if l.cl.s != nil && t.loginSucceededCluster(now, user) {
		t.spentIP, t.spentPrefix = 0, 0
	}
	if t.spentIP != 0 {
		l.rateIP.refund(t.k, t.spentIP, now)
		t.spentIP = 0
	}
	if t.spentPrefix != 0 {
		l.ratePrefix.refund(t.pk.addr, t.spentPrefix, now)
		t.spentPrefix = 0
	}
	p := l.policy()
	n := now.UnixNano()
	uh := l.userHash(user)
	if until, share := l.goodIP.login(t.k, uh, n, &p.KnownGood); until != 0 {
		if f := l.onGood.Load(); f != nil {
			(*f)(t.addr, time.Unix(0, until))
		}
		if share && l.cl.s != nil {
			l.cl.s.KnownGood(netip.PrefixFrom(t.addr, t.addr.BitLen()), time.Unix(0, until))
		}
	}
	if until, share := l.goodPrefix.login(t.pk.addr, uh, n, &p.KnownGood); share && l.cl.s != nil {
		l.cl.s.KnownGood(p.PrefixOf(t.addr), time.Unix(0, until))
	}
	f := l.fails
	f.mu.Lock()
	f.lru.Remove(userFailKey(t.addr, uh))
	f.mu.Unlock()
}

// UserBanned reports whether logins of user from the ticket's address are
// refused by a user+address ban.
func (t *Ticket) UserBanned(now time.Time, user string) bool {
	if t.none() || t.exempt {
		return false
	}
	return t.l.fails.userBanned(t.addr, t.l.userHash(user), now.UnixNano())
}
