package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"imapgate/certs"
	"imapgate/cluster"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/embedded"
	"imapgate/kernel"
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
	// Registerer, if non-nil, takes the cluster's metrics ([cluster]).
	Registerer prometheus.Registerer
}

// Gate is imapgate's parts, built from one configuration. The exported
// fields are fixed for its life; what a reload changes is in the Snapshot,
// which the parts read (the limiter, the table and the proxy through
// Follow, TLS handshakes through GetCertificate), so that a reload is one
// atomic store, as soju's SetConfig.
type Gate struct {
	Log     *courierlog.Logger
	Table   *conntable.Table
	Limiter *limiter.Limiter
	Server  *proxy.Server
	Cluster *cluster.Cluster // nil without [cluster] redis

	kernel kernelPath // [kernel]: StartKernel
	opts   Options
	emb    *embedded.Server // started once, kept across reloads
	cur    atomic.Pointer[Snapshot]
	reload sync.Mutex // one reload at a time
}

// Snapshot is one checked configuration and what was built from it. A
// reload builds a whole new one, checks it, and stores it; nothing else
// changes.
type Snapshot struct {
	Config   *config.Config
	policy   *limiter.Policy   // limiter.Prepare'd
	table    *conntable.Config // Table.Prepare'd
	settings *proxy.Settings
	certs    *certs.Store // Options.Certs, or loaded from the files
	trusted  []netip.Prefix
}

// New builds the parts from cfg.
func New(cfg *config.Config, o Options) (*Gate, error) {
	if o.Log == nil {
		return nil, errors.New("gateway: Options.Log is required")
	}
	g := &Gate{Log: o.Log, opts: o}
	g.kernel.conntrack = &kernel.ConntrackWatch{Root: "/", Log: o.Log.Message,
		NFTablesOn: func() bool { return g.kernel.kern.Load() != nil }}
	var err error
	if g.Table, err = conntable.New(TableConfig(cfg), func(m string) { o.Log.Message(courierlog.Warning, m) }); err != nil {
		return nil, err
	}
	if g.Limiter, err = limiter.New(Policy(cfg), limiter.Options{RateEntries: cfg.Limits.RateEntries}); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	snap, err := g.build(cfg)
	if err != nil {
		g.Close()
		return nil, err
	}
	g.cur.Store(snap)
	g.Table.Follow(func() *conntable.Config { return g.cur.Load().table })
	g.Limiter.Follow(func() *limiter.Policy { return g.cur.Load().policy })
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
	tc := snap.certs.ServerConfig(minVersion, cfg.TLS.PostQuantum)
	tc.GetCertificate = g.GetCertificate
	if err := g.startCluster(cfg.Cluster, tc); err != nil {
		g.Close()
		return nil, err
	}
	g.Server, err = proxy.New(proxy.Options{
		TLSConfig: tc, Upstream: snap.settings.Upstream, Log: sessionLog, Table: g.Table, Limiter: g.Limiter,
		Login: snap.settings.Login, Events: events, Tracker: tracker, OnRefused: g.refused,
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	g.Server.Follow(func() *proxy.Settings { return g.cur.Load().settings })
	return g, nil
}

// startCluster joins the cluster of [cluster] redis, if set: the limiter
// shares its state through Redis (local limits while Redis is away), and
// the TLS session ticket keys are the cluster's. It returns once the node
// is in, or Redis failed to answer within a second.
func (g *Gate) startCluster(c config.Cluster, tc *tls.Config) error {
	if c.Redis == "" {
		return nil
	}
	o := ClusterOptions(c)
	o.Log = func(m string) { g.Log.Message(courierlog.Info, m) }
	cl, err := cluster.New(o)
	if err != nil {
		return err
	}
	if g.opts.Registerer != nil {
		cl.Register(g.opts.Registerer)
	}
	if c.TicketKeys {
		cl.ShareTicketKeys(tc, c.TicketRotation.D())
	}
	cl.Start(g.Limiter)
	g.Cluster = cl
	return nil
}

// ClusterOptions are the options of [cluster]'s node, for the node and
// for -check's probe alike.
func ClusterOptions(c config.Cluster) cluster.Options {
	return cluster.Options{URL: c.Redis, Node: c.Node, KeyPrefix: c.KeyPrefix, Timeout: c.Timeout.D(),
		NodeTTL: c.NodeTTL.D(), OverLimitHold: c.OverLimitHold.D(), TLSCAFile: c.TLSCAFile}
}

// GetCertificate is the client side's tls.Config.GetCertificate: the
// snapshot's certificates.
func (g *Gate) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return g.cur.Load().certs.GetCertificate(hello)
}

// Expiry returns the certificates' expiry, for metrics.
func (g *Gate) Expiry() map[string]time.Time { return g.cur.Load().certs.Expiry() }

// Config returns the configuration in force.
func (g *Gate) Config() *config.Config { return g.cur.Load().Config }

// build makes and checks everything a configuration describes that can be
// made without touching what is in force.
func (g *Gate) build(cfg *config.Config) (*Snapshot, error) {
	s := &Snapshot{Config: cfg, certs: g.opts.Certs}
	var err error
	if s.policy, err = limiter.Prepare(Policy(cfg)); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	if s.table, err = g.Table.Prepare(TableConfig(cfg)); err != nil {
		return nil, err
	}
	if s.certs == nil {
		sources, err := CertSources(cfg)
		if err != nil {
			return nil, err
		}
		if s.certs, err = certs.NewStore(sources); err != nil {
			return nil, err
		}
	}
	up, err := g.buildUpstream(cfg)
	if err != nil {
		return nil, err
	}
	s.settings = proxy.NewSettings(up, LoginBounds(cfg))
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
		pool, err := certs.CAPool(u.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls_ca_file: %w", err)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// Changed names a setting and whether a reload changed it (Reload's also).
type Changed struct {
	Key     string
	Changed bool
}

// restartOnly returns an error naming the settings among keys that a
// reload changed (they cannot change without a restart), or nil if none did.
func restartOnly(keys ...Changed) error {
	var changed []string
	for _, k := range keys {
		if k.Changed {
			changed = append(changed, k.Key)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return fmt.Errorf("%s changed, which needs a restart", strings.Join(changed, ", "))
}

// Reload puts cfg in force for new connections, or changes nothing and
// says why. Everything is built and checked first (certificates loaded,
// policy validated, the table's new bounds checked, the upstream built)
// into a new Snapshot; one atomic store then puts all of it in force.
// Live sessions and limit counters are untouched. A changed [kernel] is
// applied then (reloadKernel): conntrack_watch re-times the host conntrack
// watch (on, off, another interval); the rest remakes the nftables path
// (on, off, another table name, dry run or escalation).
//
// also lists the restart-only settings the caller holds (listeners, log
// outputs, the admin endpoint): a refusal names them with the gate's own
// in one error, so an admin fixes them all at once.
func (g *Gate) Reload(cfg *config.Config, also ...Changed) error {
	g.reload.Lock()
	defer g.reload.Unlock()
	old := g.cur.Load().Config
	if err := restartOnly(slices.Concat(also, []Changed{
		{"upstream.mode", cfg.Upstream.Mode != old.Upstream.Mode},
		{"tls.min_version", cfg.TLS.MinVersion != old.TLS.MinVersion},
		{"tls.post_quantum", cfg.TLS.PostQuantum != old.TLS.PostQuantum},
		{"[cluster]", cfg.Cluster != old.Cluster},
		{"listen.proxy_protocol_from (on or off)", (len(old.Listen.ProxyProtocolFrom) == 0) != (len(cfg.Listen.ProxyProtocolFrom) == 0)},
		{"table.buckets", cfg.Table.Buckets != old.Table.Buckets},
	})...); err != nil {
		return err
	}
	snap, err := g.build(cfg)
	if err != nil {
		return err
	}
	g.cur.Store(snap) // everything is checked: put it in force
	g.Server.ForgetUpstreamProblems()
	// [kernel] last: a table that cannot be made is logged, as at start,
	// and the reload stands (the userspace limits apply); a part left as
	// it was is the caller's to tell (PartialReload).
	if msg := g.reloadKernel(cfg.Kernel); msg != "" {
		return &PartialReload{NotApplied: []string{msg}}
	}
	return nil
}

// PartialReload is Reload's error when the new configuration is in force
// but for a part left as it was (each named in NotApplied): the caller
// reports a reload, and what it did not apply.
type PartialReload struct {
	NotApplied []string
}

func (e *PartialReload) Error() string {
	return "reloaded, except: " + strings.Join(e.NotApplied, "; ")
}

// Warnings is what was not applied, for the admin endpoint.
func (e *PartialReload) Warnings() []string { return e.NotApplied }

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

// Close stops the kernel path (removing its nftables table) and the
// conntrack watch, leaves the cluster and stops the embedded server, if
// any. The proxy is stopped by its own Shutdown or Close, first.
func (g *Gate) Close() {
	g.closeKernel()
	if g.emb != nil {
		g.emb.Close()
	}
	if g.Cluster != nil {
		g.Cluster.Close()
	}
}
