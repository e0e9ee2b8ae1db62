// Package proxy is imapgate's IMAPS front door: it terminates TLS, watches
// the login exchange with a small strict scanner, enforces the limiter's
// decisions and the connection table's bounds, then relays the session to
// the upstream IMAP server and gets out of the way.
//
// Layers per connection, in order: raw TCP -> PROXY header (the listener
// the caller passes, from trusted sources only) -> admission -> table
// entry -> TLS -> IMAP login phase -> byte relay.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/internal/sock"
	"imapgate/internal/throttle"
	"imapgate/internal/tick"
	"imapgate/limiter"
	"imapgate/upstream"
)

// Login bounds the login phase. Zero fields take the defaults.
type Login struct {
	MaxLine     int // bytes per line from the client before login (8 KiB)
	MaxLiteral  int // bytes per literal before login (8 KiB)
	MaxCommands int // commands before login (32)
	MaxErrors   int // malformed commands before the client is cut off (3)
	// GreetingTimeout bounds waiting for the upstream's greeting (10 s).
	GreetingTimeout time.Duration
	// NoUpstreamID stops imapgate from sending its own ID with the
	// client's address before LOGIN (upstream.send_id = false). A client's
	// x-* ID fields are dropped either way.
	NoUpstreamID bool
}

func (l Login) withDefaults() Login {
	if l.MaxLine <= 0 {
		l.MaxLine = 8 << 10
	}
	if l.MaxLiteral <= 0 {
		l.MaxLiteral = 8 << 10
	}
	if l.MaxCommands <= 0 {
		l.MaxCommands = 32
	}
	if l.MaxErrors <= 0 {
		l.MaxErrors = 3
	}
	if l.GreetingTimeout <= 0 {
		l.GreetingTimeout = 10 * time.Second
	}
	return l
}

// Options configure a Server.
type Options struct {
	// TLSConfig serves the client side. Required.
	TLSConfig *tls.Config
	// Upstream is the IMAP server. Required.
	Upstream upstream.Dialer
	// Log receives courier-format lines; nil discards them.
	Log *courierlog.Logger
	// Table tracks connections. Nil means a table of 4096 entries with
	// the default timeouts.
	Table *conntable.Table
	// Limiter admits connections and logins. Nil means no limits.
	Limiter *limiter.Limiter
	// Login bounds the login phase.
	Login Login
	// Events receives counts for metrics; nil means none.
	Events Events
	// Tracker learns refused and failing addresses; nil means none.
	Tracker Tracker
	// OnRefused is called with the address and the limit of every refusal
	// a limit made (before or after TLS, at admission or at login), in the
	// goroutine that refused (the accept loop, for most): it must be quick
	// and never block; now is when the refusal was decided.
	// kernel.Kernel.Refused escalates on it. Nil: none.
	OnRefused func(a netip.Addr, r limiter.Reason, now time.Time)
}

// Settings are the parts of Options a reload may swap, read by each new
// session.
type Settings struct {
	Upstream upstream.Dialer
	Login    Login
}

// NewSettings returns Settings for u and l, l with its defaults filled in.
func NewSettings(u upstream.Dialer, l Login) *Settings {
	return &Settings{Upstream: u, Login: l.withDefaults()}
}

// Server is an IMAPS proxy. Create it with New, then call Serve.
type Server struct {
	tlsConfig *tls.Config
	log       *courierlog.Logger
	table     *conntable.Table
	limiter   *limiter.Limiter
	events    Events
	tracker   Tracker
	onRefused func(netip.Addr, limiter.Reason, time.Time)
	own       atomic.Pointer[Settings] // New's and SetUpstream's
	settings  func() *Settings         // own.Load, or what Follow gave
	life      lifecycle
	park      parking
	// refusalLog throttles refusal lines per limit, as the kernel throttles
	// "table full": a flood must not become a disk flood.
	refusalLog [limiter.NumReasons]*throttle.Throttle
	// timeoutLog throttles the "TLS handshake timed out." lines the same
	// way: a silent flood times out thousands of connections at once.
	timeoutLog *throttle.Throttle
	// late bounds the shared refusals that come once a handshake ran
	// (settleAfterTLS): past its burst, admissions wait for the verdict
	// before TLS again, for the rest of its interval.
	late lateRefusals
	// problems are upstream misconfigurations seen (upstreamcheck.go).
	problems [numProblems]atomic.Pointer[upstreamReport]
	// verdicts runs confirm's shared-verdict calls.
	verdicts *workers
}

// lifecycle is what Serve, Shutdown and Close share.
type lifecycle struct {
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	acceptors []*sock.Acceptor // serveRaw's, closed with the listeners
	shutdown  bool
	sessions  sync.WaitGroup // every session that started (startSession)
	reaper    sync.Once      // the table's expiry goroutine
	stop      chan struct{}  // closed at shutdown: stops the reaper
}

// parking is where idle relay directions wait without a goroutine.
type parking struct {
	poller *sock.Poller // nil where unavailable
	parked atomic.Int64 // relay directions waiting in the poller
	silent atomic.Int64 // connections waiting for a first record (park.go)
	stop   sync.Once
}

// New checks opts and returns a Server.
func New(opts Options) (*Server, error) {
	if opts.TLSConfig == nil {
		return nil, errors.New("proxy: TLSConfig is required")
	}
	if opts.Upstream == nil {
		return nil, errors.New("proxy: Upstream is required")
	}
	if opts.Table == nil {
		t, err := conntable.New(conntable.Config{Max: 4096}, nil)
		if err != nil {
			return nil, err
		}
		opts.Table = t
	}
	if opts.Events == nil {
		opts.Events = nopEvents{}
	}
	if opts.Tracker == nil {
		opts.Tracker = nopTracker{}
	}
	s := &Server{
		tlsConfig: opts.TLSConfig,
		log:       opts.Log,
		table:     opts.Table,
		limiter:   opts.Limiter,
		events:    opts.Events,
		tracker:   opts.Tracker,
		onRefused: opts.OnRefused,
		life:      lifecycle{listeners: make(map[net.Listener]struct{}), stop: make(chan struct{})},
	}
	if p, err := sock.NewPoller(); err == nil {
		s.park.poller = p
	}
	for i := range s.refusalLog {
		s.refusalLog[i] = newRefusalThrottle()
	}
	s.timeoutLog = newRefusalThrottle()
	s.late.t = throttle.New(time.Second, lateRefusalBurst)
	s.verdicts = newWorkers(s.life.stop)
	s.own.Store(NewSettings(opts.Upstream, opts.Login))
	s.settings = s.own.Load
	return s, nil
}

// Parked is the number of relay directions waiting in the poller without
// a goroutine (an idle session has two).
func (s *Server) Parked() int { return int(s.park.parked.Load()) }

// Table returns the connection table.
func (s *Server) Table() *conntable.Table { return s.table }

// SetUpstream swaps the upstream and the login-phase bounds for new
// sessions, in one store (reload), and forgets the upstream problems seen.
func (s *Server) SetUpstream(u upstream.Dialer, l Login) {
	s.own.Store(NewSettings(u, l))
	s.ForgetUpstreamProblems()
}

// Follow makes the server read its Settings from src from now on, instead
// of keeping its own: a caller's snapshot of a whole configuration,
// swapped in one store (then ForgetUpstreamProblems when the upstream
// changed). Call it before Serve.
func (s *Server) Follow(src func() *Settings) { s.settings = src }

// newRefusalThrottle lets 50 refusal lines per limit be written in 5 s;
// the rest are only counted ("N callbacks suppressed").
func newRefusalThrottle() *throttle.Throttle { return throttle.New(5*time.Second, 50) }

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln until Shutdown or Close. ln may be a
// proxyproto listener: the header is read in the connection's goroutine,
// never in this loop.
func (s *Server) Serve(ln net.Listener) error {
	s.life.mu.Lock()
	if s.life.shutdown {
		s.life.mu.Unlock()
		return ErrServerClosed
	}
	s.life.listeners[ln] = struct{}{}
	s.life.mu.Unlock()
	s.life.reaper.Do(func() {
		go s.table.Run(s.life.stop, time.Second)
		go tick.Every(s.life.stop, 5*time.Second, s.flushSuppressed)
	})
	defer func() {
		s.life.mu.Lock()
		delete(s.life.listeners, ln)
		s.life.mu.Unlock()
	}()
	if tl, ok := ln.(*net.TCPListener); ok && s.limiter != nil {
		return s.serveRaw(tl)
	}
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				s.acceptBackoff(err, &backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		if !s.startSession() {
			conn.Close()
			return ErrServerClosed
		}
		go s.serveConn(conn, admission{})
	}
}

// startSession counts a new session for Shutdown and Close to wait for,
// unless they have begun: then the caller closes the connection. Under
// s.life.mu, so no session can start after closeListeners has returned (a
// WaitGroup must not be added to while it is waited on from zero).
func (s *Server) startSession() bool {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	if s.life.shutdown {
		return false
	}
	s.life.sessions.Add(1)
	return true
}

// acceptBackoff waits after a failed accept that may pass (out of file
// descriptors and the like), doubling up to a second as net/http does,
// instead of spinning; the server keeps serving.
func (s *Server) acceptBackoff(err error, backoff *time.Duration) {
	*backoff = min(max(2**backoff, 5*time.Millisecond), time.Second)
	s.log.Message(courierlog.Err, fmt.Sprintf("accept: %v; retrying in %v", err, *backoff))
	time.Sleep(*backoff)
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) closing() bool {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	return s.life.shutdown
}

func (s *Server) closeListeners() {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	if !s.life.shutdown {
		s.life.shutdown = true
		close(s.life.stop)
	}
	for ln := range s.life.listeners {
		ln.Close()
	}
	for _, a := range s.life.acceptors {
		a.Close()
	}
	s.life.acceptors = nil
}

// Shutdown stops accepting, ends sessions still in the login phase with
// "* BYE", lets logged-in sessions run until ctx ends, then closes them
// with courier's "Disconnected during shutdown by signal" lines, and waits
// for every session to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	s.table.KillAll(conntable.Shutdown, func(e *conntable.Entry) bool { return !e.State().Assured() })
	done := make(chan struct{})
	go func() { s.life.sessions.Wait(); close(done) }()
	select {
	case <-done:
		s.stopPoller()
		return nil
	case <-ctx.Done():
	}
	s.table.KillAll(conntable.Shutdown, nil)
	<-done
	s.stopPoller()
	return ctx.Err()
}

// stopPoller ends the poller's goroutine once every session is gone.
func (s *Server) stopPoller() {
	s.park.stop.Do(func() {
		if s.park.poller != nil {
			s.park.poller.Close()
		}
	})
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.table.KillAll(conntable.Shutdown, nil)
	s.life.sessions.Wait()
	s.stopPoller()
	return nil
}
