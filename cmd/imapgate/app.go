package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"imapgate/admin"
	"imapgate/certs"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/embedded"
	"imapgate/kernel"
	"imapgate/limiter"
	"imapgate/proxy"
)

// app is the running daemon: what main built from the configuration, and
// what a reload swaps.
type app struct {
	flags     flags
	cfg       atomic.Pointer[config.Config]
	log       *courierlog.Logger
	logs      *logSinks
	store     *certs.Store
	table     *conntable.Table
	limiter   *limiter.Limiter
	srv       *proxy.Server
	emb       *embedded.Server
	trusted   atomic.Pointer[[]netip.Prefix] // PROXY header sources
	listeners []net.Listener
	activated bool // listeners came from systemd
	files     openFiles
	metrics   *admin.Metrics
	adminSrv  *http.Server
	adminLn   net.Listener
	reloadMu  sync.Mutex
	ready     atomic.Bool
	// kern is the nftables path ([kernel] nftables), nil when off or
	// unavailable (kernNote says which); conntrack watches the host's
	// table. Both run until stop is closed.
	kern      *kernel.Kernel
	kernNote  string
	conntrack *kernel.ConntrackWatch
	stop      chan struct{}
}

func newApp(cfg *config.Config, f flags) (*app, error) {
	a := &app{flags: f, stop: make(chan struct{})}
	var err error
	if a.logs, err = openLog(cfg.Log); err != nil {
		return nil, err
	}
	a.log = courierlog.New(a.logs.main, courierlog.Options{TLS: true, LoginStartTLS: cfg.Log.LoginStartTLS})
	if a.files, err = checkOpenFiles(cfg, f.demo); err != nil {
		return nil, err
	}
	if a.files.short != "" {
		a.log.Message(courierlog.Warning, "imapgate: warning: "+a.files.short)
	}
	if a.store, err = buildStore(cfg, f.demo); err != nil {
		return nil, err
	}
	if a.table, err = conntable.New(cfg.TableConfig(), func(m string) { a.log.Message(courierlog.Warning, m) }); err != nil {
		return nil, err
	}
	if a.limiter, err = limiter.New(cfg.Policy(), limiter.Options{RateEntries: cfg.Limits.RateEntries}); err != nil {
		return nil, fmt.Errorf("limits: %w", err)
	}
	up, err := a.buildUpstream(cfg)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := readBuildInfo()
	admin.RegisterBuildInfo(reg, admin.BuildInfo{Version: bi.Version, GoVersion: bi.GoVersion, Revision: bi.Revision})
	top := admin.NewTop(1024)
	a.conntrack = &kernel.ConntrackWatch{Root: "/", Log: a.log.Message}
	a.metrics = admin.NewMetrics(reg, admin.Sources{Table: a.table, Limiter: a.limiter, Certs: a.store,
		Parked: func() int { return a.srv.Parked() }, LogDropped: a.logs.Dropped(),
		Kernel: a.kernelStats, Conntrack: a.conntrack.Last}, top)
	minVersion, _ := certs.TLSVersion(cfg.TLS.MinVersion)
	sessionLog := a.log
	if cfg.Upstream.Mode == "exec" {
		sessionLog = a.log.WithoutSessionLines() // courier writes them itself
	}
	a.srv, err = proxy.New(proxy.Options{
		TLSConfig: a.store.ServerConfig(minVersion, cfg.TLS.PostQuantum),
		Upstream:  up,
		Log:       sessionLog,
		Table:     a.table,
		Limiter:   a.limiter,
		Login:     cfg.LoginBounds(),
		Events:    a.metrics,
		Tracker:   a.metrics,
		OnRefused: a.refused,
	})
	if err != nil {
		return nil, err
	}
	trusted := prefixesOf(cfg.Listen.ProxyProtocolFrom)
	a.trusted.Store(&trusted)
	raw, err := systemdListeners()
	if err != nil {
		return nil, err
	}
	if a.activated = len(raw) > 0; !a.activated {
		// Keepalive is enabled per session after admission (proxy), so a
		// refused connection costs no setsockopt calls.
		lc := net.ListenConfig{KeepAlive: -1}
		ln, err := lc.Listen(context.Background(), "tcp", cfg.Listen.Address)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("listen.address: %w", err)
		}
		raw = []net.Listener{ln}
	}
	for _, ln := range raw {
		a.listeners = append(a.listeners, a.wrapProxyProtocol(cfg, ln))
	}
	a.cfg.Store(cfg)
	a.openKernel(cfg, raw)
	if err := a.startAdmin(cfg, reg, top); err != nil {
		if !f.demo || cfg.IsSet("admin.address") {
			a.close()
			return nil, err
		}
		// The demo must start on any machine: without its admin port it
		// still serves IMAP.
		a.logf("imapgate: demo without metrics and ctl: %v", err)
	}
	return a, nil
}

// startAdmin serves /metrics and the admin endpoint on [admin] address.
func (a *app) startAdmin(cfg *config.Config, reg *prometheus.Registry, top *admin.Top) error {
	addr := cfg.Admin.Address
	if addr == "" {
		return nil
	}
	var ln net.Listener
	var err error
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		os.Remove(path)
		if ln, err = net.Listen("unix", path); err == nil {
			os.Chmod(path, 0o600)
		}
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("admin.address: %w", err)
	}
	a.adminLn = ln
	h := admin.New(admin.Options{
		Table: a.table, Limiter: a.limiter, Top: top, Gatherer: reg, Token: cfg.Admin.Token,
		Reload: a.reload, ReopenLogs: a.reopenLogs, Ready: a.ready.Load, UpstreamProblems: a.srv.UpstreamProblems,
		KernelMembers: a.kernelMembers, AfterUnban: a.unbanned,
		Info: func() map[string]any {
			c := a.cfg.Load()
			addrs := make([]string, len(a.listeners))
			for i, l := range a.listeners {
				addrs[i] = l.Addr().String()
			}
			return map[string]any{"listen": addrs, "upstream": c.Upstream.Address, "upstream_mode": c.Upstream.Mode,
				"config": describe(a.flags), "socket_activated": a.activated}
		},
	})
	a.adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go a.adminSrv.Serve(ln)
	return nil
}

func prefixesOf(ps []config.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Prefix
	}
	return out
}

func buildStore(cfg *config.Config, demo bool) (*certs.Store, error) {
	if demo {
		c, err := certs.SelfSigned("localhost", "127.0.0.1", "::1")
		if err != nil {
			return nil, err
		}
		return certs.NewStatic(c), nil
	}
	sources, err := cfg.CertSources()
	if err != nil {
		return nil, err
	}
	return certs.NewStore(sources)
}

func (a *app) buildUpstream(cfg *config.Config) (proxy.Upstream, error) {
	u := cfg.Upstream
	if u.Mode == "exec" {
		vars, _, err := config.ShellVars(config.CourierFiles(u.CourierConfig)...)
		if err != nil {
			return nil, fmt.Errorf("upstream.courier_config: %w", err)
		}
		return proxy.NewExecUpstream(u.Exec, vars, a.log)
	}
	if u.Address == "embedded" {
		if a.emb == nil {
			accounts := embedded.DemoAccounts()
			var err error
			if a.emb, err = embedded.Start(accounts); err != nil {
				return nil, err
			}
		}
		return a.emb.Upstream(), nil
	}
	t := &proxy.TCPUpstream{Address: u.Address, ConnectTimeout: u.ConnectTimeout.D()}
	switch u.ProxyProtocol {
	case "v1":
		t.ProxyHeader = 1
	case "v2":
		t.ProxyHeader = 2
	}
	if u.TLS {
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
		t.TLS = tc
	}
	return t, nil
}

// wrapProxyProtocol adds, if load balancers are trusted, PROXY header
// parsing for their connections only (the header is read lazily in each
// session's goroutine, never in the accept loop).
func (a *app) wrapProxyProtocol(cfg *config.Config, ln net.Listener) net.Listener {
	if len(cfg.Listen.ProxyProtocolFrom) == 0 {
		return ln
	}
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: cfg.Listen.ProxyHeaderTimeout.D(),
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if ta, ok := o.Upstream.(*net.TCPAddr); ok {
				ip := ta.AddrPort().Addr().Unmap()
				for _, p := range *a.trusted.Load() {
					if p.Contains(ip) {
						return proxyproto.USE, nil
					}
				}
			}
			return proxyproto.SKIP, nil
		},
	}
}

// reload re-reads the configuration and certificates, checks everything,
// and swaps it all, or changes nothing and says why. Live sessions and
// limit counters are untouched; new limits apply to new connections.
// SIGHUP and the admin endpoint both come here, one at a time. Log files
// are not reopened here (reopenLogs is).
func (a *app) reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	notifyReloading()
	defer notify("READY=1")
	err := a.tryReload()
	a.metrics.Reloaded(err)
	if err != nil {
		a.logf("imapgate: reload failed, keeping the running configuration: %v", oneLine(err))
		return err
	}
	a.logf("imapgate: configuration reloaded")
	return nil
}

func (a *app) tryReload() error {
	cfg, err := loadConfig(a.flags)
	if err != nil {
		return err
	}
	old := a.cfg.Load()
	if (cfg.Listen.Address != old.Listen.Address && !a.activated) || cfg.Log != old.Log ||
		cfg.Upstream.Mode != old.Upstream.Mode || cfg.Admin != old.Admin ||
		cfg.TLS.MinVersion != old.TLS.MinVersion || cfg.TLS.PostQuantum != old.TLS.PostQuantum ||
		(len(old.Listen.ProxyProtocolFrom) == 0) != (len(cfg.Listen.ProxyProtocolFrom) == 0) || cfg.Kernel != old.Kernel {
		return errors.New("listen.address, [log], [admin], [kernel], upstream.mode, tls.min_version, tls.post_quantum and turning proxy_protocol_from on or off need a restart")
	}
	// The demo's generated certificate stays; files are read again.
	var store *certs.Store
	if !a.flags.demo {
		if store, err = buildStore(cfg, false); err != nil {
			return err
		}
	}
	if cfg.Table.Buckets != old.Table.Buckets {
		return errors.New("table.buckets cannot change without a restart")
	}
	policy := cfg.Policy()
	if err := policy.Validate(); err != nil {
		return err
	}
	up, err := a.buildUpstream(cfg)
	if err != nil {
		return err
	}
	// Everything is checked: swap.
	if store != nil {
		a.store.Adopt(store)
	}
	if err := a.table.Reconfigure(cfg.TableConfig()); err != nil {
		return err
	}
	a.limiter.SetPolicy(policy)
	a.srv.SetUpstream(up)
	a.srv.SetLogin(cfg.LoginBounds())
	trusted := prefixesOf(cfg.Listen.ProxyProtocolFrom)
	a.trusted.Store(&trusted)
	a.cfg.Store(cfg)
	return nil
}

// reopenLogs reopens the log file after logrotate moved it, or reconnects
// to syslog; nothing else changes. SIGUSR1, SIGHUP (before its reload, and
// whatever the reload's outcome) and the admin endpoint come here.
func (a *app) reopenLogs() error {
	ok, err := a.logs.Reopen()
	if err != nil {
		a.logf("imapgate: %v", err)
		return err
	}
	if ok {
		a.logf("imapgate: %s reopened", a.logs.where)
	}
	return nil
}

// probeUpstream connects to the upstream once at start, so that an
// unreachable or misconfigured upstream (LOGINDISABLED to imapgate) is
// named in the log before the first client meets it.
func (a *app) probeUpstream() {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := a.srv.ProbeUpstream(ctx); err != nil {
		a.log.Message(courierlog.Warning, fmt.Sprintf("imapgate: warning: upstream probe: %v", err))
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func (a *app) logf(format string, args ...any) {
	a.log.Message(courierlog.Info, fmt.Sprintf(format, args...))
}

func (a *app) close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	if a.kern != nil {
		if err := a.kern.Close(); err != nil {
			a.logf("imapgate: removing the nftables table: %v", err)
		}
	}
	for _, ln := range a.listeners {
		ln.Close()
	}
	if a.adminSrv != nil {
		a.adminSrv.Close()
	}
	if a.emb != nil {
		a.emb.Close()
	}
	a.logs.Close() // flushes buffered lines
}

// startupReport is one line with what is in force.
func (a *app) startupReport() {
	cfg := a.cfg.Load()
	l := cfg.Limits
	addrs := make([]string, len(a.listeners))
	for i, ln := range a.listeners {
		addrs[i] = ln.Addr().String()
	}
	how := ""
	if a.activated {
		how = " (socket-activated)"
	}
	a.logf("imapgate: listening on %s%s, upstream %s%s; admin %s; table max=%d buckets=%d; limits max_connections=%d max_per_ip=%d max_preauth_per_ip=%d max_per_prefix=%d (/%d, /%d) max_per_user_ip=%d rate_per_ip=%s; open files %d (hard %d) for %d needed; kernel %s; host conntrack %s",
		strings.Join(addrs, ","), how, upstreamNote(cfg), proxyNote(cfg), a.adminNote(), a.table.Max(), a.table.Config().Buckets,
		l.MaxConnections, l.MaxPerIP, l.MaxPreauthPerIP, l.MaxPerPrefix, l.IPv4Prefix, l.IPv6Prefix, l.MaxPerUserIP,
		rateString(l.RatePerIP), a.files.soft, a.files.hard, a.files.need, a.kernNote, conntrackNote(a.conntrack))
}

func upstreamNote(cfg *config.Config) string {
	if cfg.Upstream.Mode == "exec" {
		return "exec " + strings.Join(cfg.Upstream.Exec, " ")
	}
	return cfg.Upstream.Address
}

func (a *app) adminNote() string {
	if a.adminLn == nil {
		return "off"
	}
	return a.adminLn.Addr().String()
}

func proxyNote(cfg *config.Config) string {
	if cfg.Upstream.ProxyProtocol != "" {
		return " with PROXY " + cfg.Upstream.ProxyProtocol
	}
	return ""
}

func rateString(r config.Rate) string {
	b, _ := r.MarshalText()
	return string(b)
}
