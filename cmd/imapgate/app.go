package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"imapgate/admin"
	"imapgate/certs"
	"imapgate/cluster"
	"imapgate/config"
	"imapgate/courierlog"
	"imapgate/gateway"
	"imapgate/internal/sock"
	"imapgate/proxy"
)

// app is the running daemon: the parts gateway.New built from the
// configuration, and what only a process has (log outputs, listeners,
// the admin endpoint).
type app struct {
	flags     flags
	log       *courierlog.Logger
	logs      *logSinks
	gate      *gateway.Gate
	srv       *proxy.Server  // gate.Server
	listeners []net.Listener // raw's, wrapped for PROXY headers where set
	raw       []net.Listener // bound before the gateway starts
	activated bool           // listeners came from systemd
	files     openFiles
	metrics   *admin.Metrics
	adminSrv  *http.Server
	adminLn   net.Listener
	ready     atomic.Bool
}

func newApp(cfg *config.Config, f flags) (_ *app, err error) {
	a := &app{flags: f}
	if a.logs, err = openLog(cfg.Log); err != nil {
		return nil, err
	}
	a.log = courierlog.New(a.logs.main, courierlog.Options{TLS: true, LoginStartTLS: cfg.Log.LoginStartTLS})
	defer func() {
		if err != nil {
			// Said in the log too, not only on stderr: under a service
			// manager or a restart script, the log is where an admin
			// looks, and it would end with the old process's last line.
			a.log.Message(courierlog.Err, "imapgate: not started: "+err.Error())
			a.close()
		}
	}()
	if a.files, err = checkOpenFiles(cfg, f.demo); err != nil {
		return nil, err
	}
	if a.files.short != "" {
		a.log.Message(courierlog.Warning, "imapgate: warning: "+a.files.short)
	}
	o := gateway.Options{Log: a.log}
	if f.demo {
		c, err := certs.SelfSigned("localhost", "127.0.0.1", "::1")
		if err != nil {
			return nil, err
		}
		o.Certs = certs.NewStatic(c) // kept across reloads
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := readBuildInfo()
	admin.RegisterBuildInfo(reg, admin.BuildInfo{Version: bi.Version, GoVersion: bi.GoVersion, Revision: bi.Revision})
	top := admin.NewTop(1024)
	o.Instrument = func(g *gateway.Gate) (proxy.Events, proxy.Tracker) {
		a.metrics = admin.NewMetrics(reg, admin.Sources{Table: g.Table, Limiter: g.Limiter, Certs: g,
			Parked: func() int { return g.Server.Parked() }, ParkedSilent: func() int { return g.Server.ParkedSilent() }, LogDropped: a.logs.Dropped(),
			Kernel: g.KernelStats, Conntrack: g.Conntrack}, top)
		return a.metrics, a.metrics
	}
	o.Registerer = reg // the cluster's metrics, with [cluster]
	// Every socket is bound before the gateway starts: a start that fails
	// on a port in use (courier's imapd-ssl still running, most often)
	// has not joined the cluster, nor touched the kernel's tables.
	if err := a.bind(cfg, f.demo); err != nil {
		return nil, err
	}
	if a.gate, err = gateway.New(cfg, o); err != nil {
		return nil, err
	}
	a.srv = a.gate.Server
	for _, ln := range a.raw {
		a.listeners = append(a.listeners, a.gate.Listener(ln))
	}
	a.gate.StartKernel(a.raw)
	a.serveAdmin(cfg, reg, top)
	return a, nil
}

// bind takes the IMAP listeners (systemd's, or listen.address) and the
// admin address's listener.
func (a *app) bind(cfg *config.Config, demo bool) error {
	raw, err := systemdListeners()
	if err != nil {
		return err
	}
	if a.activated = len(raw) > 0; !a.activated {
		ln, err := sock.Listen(cfg.Listen.Address)
		if err != nil {
			return fmt.Errorf("listen.address: %w", err)
		}
		raw = []net.Listener{ln}
	}
	a.raw = raw
	if err := a.listenAdmin(cfg); err != nil {
		if !demo || cfg.IsSet("admin.address") {
			return err
		}
		// The demo must start on any machine: without its admin port it
		// still serves IMAP.
		a.logf("imapgate: demo without metrics and ctl: %v", err)
	}
	return nil
}

// listenAdmin takes admin.address's listener, if one is set.
func (a *app) listenAdmin(cfg *config.Config) error {
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
		ln, err = sock.Listen(addr)
	}
	if err != nil {
		return fmt.Errorf("admin.address: %w", err)
	}
	a.adminLn = ln
	return nil
}

// serveAdmin serves /metrics and the admin endpoint on listenAdmin's
// listener, if any.
func (a *app) serveAdmin(cfg *config.Config, reg *prometheus.Registry, top *admin.Top) {
	if a.adminLn == nil {
		return
	}
	h := admin.New(admin.Options{
		Table: a.gate.Table, Limiter: a.gate.Limiter, Top: top, Gatherer: reg, Token: cfg.Admin.Token,
		Reload: a.reload, ReopenLogs: a.reopenLogs, Ready: a.ready.Load, UpstreamProblems: a.srv.UpstreamProblems,
		Cluster:       a.clusterStatus(),
		KernelMembers: a.gate.KernelMembers, AfterUnban: a.gate.Unbanned, Kernel: a.gate.KernelState, Logf: a.logf,
		Info: func() map[string]any {
			c := a.gate.Config()
			addrs := make([]string, len(a.listeners))
			for i, l := range a.listeners {
				addrs[i] = l.Addr().String()
			}
			mode := c.Upstream.Mode
			if c.Upstream.Address == "embedded" {
				mode = "in-process demo server" // reached over loopback TCP, but not a server of the admin's
			}
			return map[string]any{"listen": addrs, "upstream": c.Upstream.Address, "upstream_mode": mode,
				"config": describe(a.flags), "socket_activated": a.activated}
		},
	})
	a.adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go a.adminSrv.Serve(a.adminLn)
}

// clusterStatus is the admin endpoint's view of the cluster, or nil.
func (a *app) clusterStatus() func(context.Context) *cluster.Status {
	if a.gate.Cluster == nil {
		return nil
	}
	return a.gate.Cluster.Status
}

// reload re-reads the configuration and certificates and puts them in
// force, or changes nothing and says why (gateway.Gate.Reload checks
// everything first). Live sessions and limit counters are untouched; new
// limits apply to new connections. SIGHUP and the admin endpoint both come
// here; the gate takes them one at a time. Log files are not reopened here
// (reopenLogs is).
func (a *app) reload() error {
	notifyReloading()
	defer notify("READY=1")
	err := a.tryReload()
	var partial *gateway.PartialReload
	if errors.As(err, &partial) {
		a.metrics.Reloaded(nil) // in force, but for what partial names (logged where it was left)
		a.logf("imapgate: configuration reloaded, except: %s", strings.Join(partial.NotApplied, "; "))
		return err
	}
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
	old := a.gate.Config()
	return a.gate.Reload(cfg,
		gateway.Changed{Key: "listen.address", Changed: cfg.Listen.Address != old.Listen.Address && !a.activated},
		gateway.Changed{Key: "[log]", Changed: cfg.Log != old.Log},
		gateway.Changed{Key: "[admin]", Changed: cfg.Admin != old.Admin},
	)
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
	for _, ln := range a.listeners {
		ln.Close()
	}
	for _, ln := range a.raw { // closed already, unless the start failed before the gateway
		ln.Close()
	}
	if a.adminSrv != nil {
		a.adminSrv.Close()
	} else if a.adminLn != nil {
		a.adminLn.Close()
	}
	if a.gate != nil {
		a.gate.Close()
	}
	a.logs.Close() // flushes buffered lines
}

// startupReport is one line with what is in force.
func (a *app) startupReport() {
	cfg := a.gate.Config()
	l := cfg.Limits
	addrs := make([]string, len(a.listeners))
	for i, ln := range a.listeners {
		addrs[i] = ln.Addr().String()
	}
	how := ""
	if a.activated {
		how = " (socket-activated)"
	}
	a.logf("imapgate: listening on %s%s, upstream %s%s; admin %s; table max=%d buckets=%d; limits max_connections=%d max_per_ip=%d max_preauth_per_ip=%d max_per_prefix=%d (/%d, /%d) max_per_user_ip=%d rate_per_ip=%s rate_per_prefix=%s; open files %d (hard %d) for %d needed; %s",
		strings.Join(addrs, ","), how, upstreamNote(cfg), proxyNote(cfg), a.adminNote(), a.gate.Table.Max(), a.gate.Table.Config().Buckets,
		l.MaxConnections, l.MaxPerIP, l.MaxPreauthPerIP, l.MaxPerPrefix, l.IPv4Prefix, l.IPv6Prefix, l.MaxPerUserIP,
		rateString(l.RatePerIP), rateString(l.RatePerPrefix), a.files.soft, a.files.hard, a.files.need, a.gate.KernelNote())
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
