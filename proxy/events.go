package proxy

import (
	"net/netip"
	"time"
)

// Events receives what metrics count. Implementations must be cheap and
// safe for concurrent use; no method gets an address or a user name, so
// nothing identifying can become a label.
type Events interface {
	Accepted()
	// Refused: a limit refused a connection or login; afterTLS is false
	// for a close before the handshake.
	Refused(reason string, afterTLS bool)
	// WouldRefuse: a limit in dry-run mode would have refused.
	WouldRefuse(reason string)
	Handshake(d time.Duration, err error)
	// SharedVerdictWait: with a cluster, how long a connection waited for
	// the shared limits' verdict once its TLS handshake was done (or
	// before TLS, when it took the verdict there; 0 if the verdict came
	// first).
	SharedVerdictWait(d time.Duration)
	// Login: the result of a LOGIN or AUTHENTICATE, one of LoginResults.
	Login(result string)
	Ban()
	UpstreamDial(d time.Duration, err error)
	// Closed: a session that reached TLS ended. (Bytes relayed are in the
	// connection table's totals, live sessions included.)
	Closed()
	// Panic: a bug ended one session (it was logged with the session's id).
	Panic()
}

type nopEvents struct{}

func (nopEvents) Accepted()                         {}
func (nopEvents) Refused(string, bool)              {}
func (nopEvents) WouldRefuse(string)                {}
func (nopEvents) Handshake(time.Duration, error)    {}
func (nopEvents) SharedVerdictWait(time.Duration)   {}
func (nopEvents) Login(string)                      {}
func (nopEvents) Ban()                              {}
func (nopEvents) UpstreamDial(time.Duration, error) {}
func (nopEvents) Closed()                           {}
func (nopEvents) Panic()                            {}

// LoginResults lists every value Events.Login reports: "ok", "failed"
// (wrong user or password), "bad", "cancelled", and the upstream's
// response codes that refuse a login for another reason, in lower case
// ("limit", "unavailable", "privacyrequired", …).
func LoginResults() []string { return loginReasons() }

// Tracker learns which addresses are refused or fail to log in, for the
// admin endpoint's top lists. It is kept apart from Events so that no
// address can end up in a metric label.
type Tracker interface {
	RefusedFrom(a netip.Addr)
	LoginFailedFrom(a netip.Addr)
}

type nopTracker struct{}

func (nopTracker) RefusedFrom(netip.Addr)     {}
func (nopTracker) LoginFailedFrom(netip.Addr) {}
