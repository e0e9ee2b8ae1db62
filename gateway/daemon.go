package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	proxyproto "github.com/pires/go-proxyproto"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/embedded"
	"imapgate/limiter"
	"imapgate/proxy"
	"imapgate/upstream"
)

// Options are what the caller supplies besides the configuration. The
// zero value of each optional field says what it means.
type Options struct {
	// Log receives courier-format lines. Required.
	Log *courierlog.Logger
	// Certs, if non-nil, serves the client side instead of the files
	// tls.cert names (the demo's and the tests' generated certificate);
	// a reload keeps it.
	Certs *certs.Store
	// Upstream, if non-nil, replaces what [upstream] describes (the tests'
	// fakes, an exec upstream with given variables); a reload keeps it.
	Upstream upstream.Dialer
	// Accounts are the embedded server's, for upstream.address =
	// "embedded"; nil means the demo's.
	Accounts []embedded.Account
	// Instrument, if non-nil, is called once the table, the limiter and
	// the certificates exist, and returns what receives the proxy's
	// counts and refused addresses (admin.Metrics); nil means none.
	Instrument func(*Gate) (proxy.Events, proxy.Tracker)
}

// Gate is imapgate's parts, built from one configuration. The exported
// fields are fixed for its life; what a reload changes is in the Snapshot.
type Gate struct {
	Log     *courierlog.Logger
	Certs   *certs.Store
	Table   *conntable.Table
	Limiter *limiter.Limiter
	Server  *proxy.Server

	opts   Options
	emb    *embedded.Server // started once, kept across reloads
	cur    atomic.Pointer[Snapshot]
	reload sync.Mutex // one reload at a time
}

// Snapshot is one checked configuration and what was built from it. A
// reload builds a whole new one before anything changes.
type Snapshot struct {
	Config   *config.Config
	policy   limiter.Policy
	table    conntable.Config
	login    proxy.Login
	upstream upstream.Dialer
	certs    *certs.Store // loaded from the files; nil when Options.Certs serves
	trusted  []netip.Prefix
}

// New builds the parts from cfg.
func New(cfg *config.Config, o Options) (*Gate, error) {
	if o.Log == nil {
		return nil, errors.New("gateway: Options.Log is required")
	}
	g := &Gate{Log: o.Log, opts: o}
	snap, err := g.build(cfg)
	if err != nil {
		g.Close()
		return nil, err
	}
	if g.Certs = o.Certs; g.Certs == nil {
		g.Certs = snap.certs
	}
	if g.Table, err = conntable.New(snap.table, func(m string) { o.Log.Message(courierlog.Warning, m) }); err != nil {
		g.Close()
		return nil, err
	}
	if g.Limiter, err = limiter.New(snap.policy, limiter.Options{RateEntries: cfg.Limits.RateEntries}); err != nil {
		g.Close()
		return nil, fmt.Errorf("limits: %w", err)
	}
	var events proxy.Events
	var tracker proxy.Tracker
	if o.Instrument != nil {
		events, tracker = o.Instrument(g)
	}
	minVersion, _ := certs.TLSVersion(cfg.TLS.MinVersion)
	sessionLog := o.Log
	if cfg.Upstream.Mode == "exec" {
		sessionLog = o.Log.WithoutSessionLines() // courier writes them itself
	}
	g.Server, err = proxy.New(proxy.Options{
		TLSConfig: g.Certs.ServerConfig(minVersion, cfg.TLS.PostQuantum),
		Upstream:  snap.upstream, Log: sessionLog, Table: g.Table, Limiter: g.Limiter,
		Login: snap.login, Events: events, Tracker: tracker,
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	g.cur.Store(snap)
	return g, nil
}

// Config returns the configuration in force.
func (g *Gate) Config() *config.Config { return g.cur.Load().Config }

// build makes and checks everything a configuration describes that can be
// made without touching what is in force.
func (g *Gate) build(cfg *config.Config) (*Snapshot, error) {
	s := &Snapshot{Config: cfg, policy: Policy(cfg), table: TableConfig(cfg), login: LoginBounds(cfg)}
	if err := s.policy.Validate(); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	if g.opts.Certs == nil {
		sources, err := CertSources(cfg)
		if err != nil {
			return nil, err
		}
		if s.certs, err = certs.NewStore(sources); err != nil {
			return nil, err
		}
	}
	var err error
	if s.upstream, err = g.buildUpstream(cfg); err != nil {
		return nil, err
	}
	for _, p := range cfg.Listen.ProxyProtocolFrom {
		s.trusted = append(s.trusted, p.Prefix)
	}
	return s, nil
}

func (g *Gate) buildUpstream(cfg *config.Config) (upstream.Dialer, error) {
	if g.opts.Upstream != nil {
		return g.opts.Upstream, nil
	}
	u := cfg.Upstream
	if u.Mode == "exec" {
		vars, _, err := config.ShellVars(config.CourierFiles(u.CourierConfig)...)
		if err != nil {
			return nil, fmt.Errorf("upstream.courier_config: %w", err)
		}
		return upstream.NewExec(u.Exec, vars, g.Log)
	}
	if u.Address == "embedded" {
		if g.emb == nil {
			accounts := g.opts.Accounts
			if accounts == nil {
				accounts = embedded.DemoAccounts()
			}
			var err error
			if g.emb, err = embedded.Start(accounts); err != nil {
				return nil, err
			}
		}
		return g.emb.Upstream(), nil
	}
	t := &upstream.TCP{Address: u.Address, ConnectTimeout: u.ConnectTimeout.D()}
	switch u.ProxyProtocol {
	case "v1":
		t.ProxyHeader = 1
	case "v2":
		t.ProxyHeader = 2
	}
	if u.TLS {
		tc, err := upstreamTLS(u)
		if err != nil {
			return nil, err
		}
		t.TLS = tc
	}
	return t, nil
}

func upstreamTLS(u config.Upstream) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(u.Address)
	tc := &tls.Config{ServerName: host, InsecureSkipVerify: !u.TLSVerify, MinVersion: tls.VersionTLS12}
	if u.TLSServerName != "" {
		tc.ServerName = u.TLSServerName
	}
	if u.TLSCAFile != "" {
		pem, err := os.ReadFile(u.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.tls_ca_file %s: no certificates found", u.TLSCAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// Reload puts cfg in force for new connections, or changes nothing and
// says why. Everything is built and checked first (certificates loaded,
// policy validated, the table's new bounds checked, the upstream built);
// only then are the parts switched, by stores that cannot fail, and the
// snapshot with them. Live sessions and limit counters are untouched.
func (g *Gate) Reload(cfg *config.Config) error {
	g.reload.Lock()
	defer g.reload.Unlock()
	old := g.cur.Load().Config
	if cfg.Upstream.Mode != old.Upstream.Mode || cfg.TLS.MinVersion != old.TLS.MinVersion ||
		cfg.TLS.PostQuantum != old.TLS.PostQuantum ||
		(len(old.Listen.ProxyProtocolFrom) == 0) != (len(cfg.Listen.ProxyProtocolFrom) == 0) {
		return errors.New("upstream.mode, tls.min_version, tls.post_quantum and turning proxy_protocol_from on or off need a restart")
	}
	if cfg.Table.Buckets != old.Table.Buckets {
		return errors.New("table.buckets cannot change without a restart")
	}
	snap, err := g.build(cfg)
	if err != nil {
		return err
	}
	if err := g.Table.Check(snap.table); err != nil {
		return err
	}
	// Everything is checked: put it in force.
	if snap.certs != nil {
		g.Certs.Adopt(snap.certs)
	}
	g.Table.Reconfigure(snap.table)
	g.Limiter.SetPolicy(snap.policy)
	g.Server.SetUpstream(snap.upstream, snap.login)
	g.cur.Store(snap)
	return nil
}

// Listener wraps ln, if load balancers are trusted, with PROXY header
// parsing for their connections only: the header is read in each
// session's goroutine (lazily, by proxyproto), never in the accept loop,
// and the trusted sources are the snapshot's in force.
func (g *Gate) Listener(ln net.Listener) net.Listener {
	cfg := g.Config()
	if len(cfg.Listen.ProxyProtocolFrom) == 0 {
		return ln
	}
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: cfg.Listen.ProxyHeaderTimeout.D(),
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if ta, ok := o.Upstream.(*net.TCPAddr); ok {
				ip := ta.AddrPort().Addr().Unmap()
				for _, p := range g.cur.Load().trusted {
					if p.Contains(ip) {
						return proxyproto.USE, nil
					}
				}
			}
			return proxyproto.SKIP, nil
		},
	}
}

// Close stops the embedded server, if one was started. The proxy is
// stopped by its own Shutdown or Close.
func (g *Gate) Close() {
	if g.emb != nil {
		g.emb.Close()
	}
}
