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
	"os"
	"sync"
	"sync/atomic"
	"time"

	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/limiter"
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
	Upstream Upstream
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
	// and never block. kernel.Kernel.Refused escalates on it. Nil: none.
	OnRefused func(a netip.Addr, r limiter.Reason)
}

// settings are the parts of Options a reload may swap.
type settings struct {
	upstream Upstream
	login    Login
}

// Server is an IMAPS proxy. Create it with New, then call Serve.
type Server struct {
	tlsConfig *tls.Config
	log       *courierlog.Logger
	table     *conntable.Table
	limiter   *limiter.Limiter
	events    Events
	tracker   Tracker
	onRefused func(netip.Addr, limiter.Reason)
	cur       atomic.Pointer[settings]

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	rawFiles  []*os.File // serveRaw's duplicates of listeners
	shutdown  bool
	sessions  sync.WaitGroup
	reaper    sync.Once
	stop      chan struct{}
	// poller parks idle relay directions; nil where unavailable.
	poller     *poller
	parked     atomic.Int64 // relay directions waiting in the poller
	pollerStop sync.Once
	// refusalLog throttles refusal lines per limit, as the kernel throttles
	// "table full": a flood must not become a disk flood.
	refusalLog [limiter.NumReasons]*courierlog.RateLimit
	// problems are upstream misconfigurations seen (upstreamcheck.go).
	problems [numProblems]atomic.Pointer[upstreamReport]
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
		listeners: make(map[net.Listener]struct{}),
		stop:      make(chan struct{}),
	}
	if p, err := newPoller(); err == nil {
		s.poller = p
	}
	for i := range s.refusalLog {
		s.refusalLog[i] = courierlog.NewRateLimit(5*time.Second, refusalLogBurst)
	}
	s.cur.Store(&settings{upstream: opts.Upstream, login: opts.Login.withDefaults()})
	return s, nil
}

// Parked is the number of relay directions waiting in the poller without
// a goroutine (an idle session has two).
func (s *Server) Parked() int { return int(s.parked.Load()) }

// Table returns the connection table.
func (s *Server) Table() *conntable.Table { return s.table }

// SetUpstream swaps the upstream for new sessions (reload).
func (s *Server) SetUpstream(u Upstream) {
	cur := *s.cur.Load()
	cur.upstream = u
	s.cur.Store(&cur)
	s.clearProblems()
}

// SetLogin swaps the login-phase bounds for new sessions (reload).
func (s *Server) SetLogin(l Login) {
	cur := *s.cur.Load()
	cur.login = l.withDefaults()
	s.cur.Store(&cur)
}

// refusalLogBurst is how many refusal lines per limit may be written in
// 5 s before the rest are only counted ("N callbacks suppressed").
const refusalLogBurst = 50

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln until Shutdown or Close. ln may be a
// proxyproto listener: the header is read in the connection's goroutine,
// never in this loop.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.reaper.Do(func() { go s.table.Run(s.stop, time.Second) })
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
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
		go s.serveConn(conn, nil)
	}
}

// startSession counts a new session for Shutdown and Close to wait for,
// unless they have begun: then the caller closes the connection. Under
// s.mu, so no session can start after closeListeners has returned (a
// WaitGroup must not be added to while it is waited on from zero).
func (s *Server) startSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.sessions.Add(1)
	return true
}

// admission is a limiter decision made before the session's goroutine.
type admission struct {
	client   Client
	ticket   limiter.Ticket
	decision limiter.Decision
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
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		s.shutdown = true
		close(s.stop)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	for _, f := range s.rawFiles {
		f.Close()
	}
	s.rawFiles = nil
}

// Shutdown stops accepting, ends sessions still in the login phase with
// "* BYE", lets logged-in sessions run until ctx ends, then closes them
// with courier's "Disconnected during shutdown by signal" lines, and waits
// for every session to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	s.table.KillAll(conntable.Shutdown, func(e *conntable.Entry) bool { return !e.State().Assured() })
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
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
	s.pollerStop.Do(func() {
		if s.poller != nil {
			s.poller.close()
		}
	})
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.table.KillAll(conntable.Shutdown, nil)
	s.sessions.Wait()
	s.stopPoller()
	return nil
}
