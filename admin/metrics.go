// Package admin serves imapgate's operations endpoint: Prometheus metrics,
// health and readiness, the connection table (like conntrack -L and -D),
// top addresses, bans and reload. Metrics are registered on a registry the
// caller passes in; no address or user name ever becomes a label.
package admin

import (
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"imapgate/conntable"
	"imapgate/internal/rlimit"
	"imapgate/kernel"
	"imapgate/limiter"
	"imapgate/proxy"
)

// Sources are what the metrics read at scrape time.
type Sources struct {
	Table   *conntable.Table
	Limiter *limiter.Limiter
	// Certs reports the certificates in force (a *certs.Store, or what
	// swaps them on reload).
	Certs interface{ Expiry() map[string]time.Time }
	// Parked counts relay directions waiting without a goroutine.
	Parked func() int
	// ParkedSilent counts connections waiting for their client's first
	// TLS record without a goroutine.
	ParkedSilent func() int
	// LogDropped reads, per log output ("stderr", "syslog", "file"), the
	// lines it could not take.
	LogDropped map[string]func() uint64
	// Kernel reads the nftables path's counters; ok false (or nil) when
	// [kernel] nftables is off or unavailable.
	Kernel func() (kernel.Stats, bool)
	// Conntrack reads the host conntrack watch's last reading; ok false
	// (or nil) without one.
	Conntrack func() (kernel.Conntrack, bool)
}

// Metrics counts proxy events (it implements proxy.Events) and exposes the
// table's and limiter's state.
type Metrics struct {
	accepted        prometheus.Counter
	refused         *prometheus.CounterVec
	wouldRefuse     *prometheus.CounterVec
	logins          *prometheus.CounterVec
	bans            prometheus.Counter
	panics          prometheus.Counter
	upstreamErrors  prometheus.Counter
	upstreamConnect prometheus.Histogram
	handshake       prometheus.Histogram
	handshakeFailed prometheus.Counter
	verdictWait     prometheus.Histogram
	closed          prometheus.Counter
	reloads         *prometheus.CounterVec
	lastReload      prometheus.Gauge
	top             *Top
	// refusedBy holds the refusal counters resolved once, so a flood of
	// refusals does not hash label values for each.
	refusedBy map[string][2]prometheus.Counter
}

// NewMetrics registers imapgate's metrics on reg.
func NewMetrics(reg prometheus.Registerer, src Sources, top *Top) *Metrics {
	m := &Metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_connections_accepted_total",
			Help: "TCP connections accepted (after any PROXY header)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imapgate_refused_total",
			Help: "Connections and logins refused, by limit and by whether before or after the TLS handshake."}, []string{"reason", "stage"}),
		wouldRefuse: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imapgate_dry_run_would_refuse_total",
			Help: "Refusals a limit in dry-run mode would have made."}, []string{"reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imapgate_logins_total",
			Help: "LOGIN and AUTHENTICATE results: ok, failed (wrong user or password: the only result penalised), bad, cancelled, or the upstream's refusal code (limit, unavailable, privacyrequired, ...)."}, []string{"result"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_session_panics_total",
			Help: "Sessions ended by a bug in imapgate (each logged with its connection id); the process and other sessions go on."}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_bans_total",
			Help: "Bans started by failed logins."}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_upstream_connect_errors_total",
			Help: "Failed connections to the upstream IMAP server."}),
		upstreamConnect: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imapgate_upstream_connect_seconds",
			Help: "Time to connect to the upstream.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8)}),
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imapgate_tls_handshake_seconds",
			Help: "Duration of completed client TLS handshakes.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8)}),
		verdictWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imapgate_cluster_verdict_wait_seconds",
			Help:    "With [cluster]: how long an admitted connection waited for the shared limits' verdict once its TLS handshake was done (or before TLS, when it took it there; under 10 µs when the verdict came first): the latency the Redis call added to the session.",
			Buckets: []float64{10e-6, 50e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 1e-3, 5e-3, 50e-3}}),
		handshakeFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_tls_handshake_failures_total",
			Help: "Client TLS handshakes that began (the client's first record had come) and failed or timed out. A silent connection closed before it sent a record is in imapgate_table_silent_timeouts_total, though the log calls it a handshake timeout too."}),
		closed: prometheus.NewCounter(prometheus.CounterOpts{Name: "imapgate_sessions_closed_total",
			Help: "Sessions that reached the TLS layer and ended."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imapgate_config_reloads_total",
			Help: "Configuration reloads, by result."}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{Name: "imapgate_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully (start or reload)."}),
		top: top,
	}
	for _, r := range proxy.LoginResults() {
		m.logins.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.reloads.WithLabelValues(r)
	}
	m.refusedBy = map[string][2]prometheus.Counter{}
	for _, reason := range append(reasonNames(), "table_full", "banned_user") {
		m.refusedBy[reason] = [2]prometheus.Counter{
			m.refused.WithLabelValues(reason, "before_tls"), m.refused.WithLabelValues(reason, "after_tls")}
	}
	for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
		m.wouldRefuse.WithLabelValues(r.String())
	}
	m.lastReload.SetToCurrentTime()
	reg.MustRegister(m.accepted, m.refused, m.wouldRefuse, m.logins, m.bans, m.panics, m.upstreamErrors, m.upstreamConnect,
		m.handshake, m.handshakeFailed, m.verdictWait, m.closed, m.reloads, m.lastReload, &stateCollector{src})
	return m
}

// BuildInfo names the running build.
type BuildInfo struct {
	Version, GoVersion, Revision string
}

// RegisterBuildInfo registers imapgate_build_info{version,goversion,revision} 1
// on reg.
func RegisterBuildInfo(reg prometheus.Registerer, b BuildInfo) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "imapgate_build_info",
		Help:        "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{"version": b.Version, "goversion": b.GoVersion, "revision": b.Revision}})
	g.Set(1)
	reg.MustRegister(g)
}

// Reloaded records a reload's result.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failed").Inc()
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.lastReload.SetToCurrentTime()
}

// proxy.Events

func (m *Metrics) Accepted() { m.accepted.Inc() }

func (m *Metrics) Refused(reason string, afterTLS bool) {
	i := 0
	if afterTLS {
		i = 1
	}
	if c, ok := m.refusedBy[reason]; ok {
		c[i].Inc()
		return
	}
	m.refused.WithLabelValues(reason, [2]string{"before_tls", "after_tls"}[i]).Inc()
}

func reasonNames() []string {
	var out []string
	for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
		out = append(out, r.String())
	}
	return out
}

func (m *Metrics) WouldRefuse(reason string) { m.wouldRefuse.WithLabelValues(reason).Inc() }

func (m *Metrics) Handshake(d time.Duration, err error) {
	if err != nil {
		m.handshakeFailed.Inc()
		return
	}
	m.handshake.Observe(d.Seconds())
}

func (m *Metrics) SharedVerdictWait(d time.Duration) { m.verdictWait.Observe(d.Seconds()) }

func (m *Metrics) Login(result string) { m.logins.WithLabelValues(result).Inc() }

func (m *Metrics) Panic() { m.panics.Inc() }

func (m *Metrics) Ban() { m.bans.Inc() }

func (m *Metrics) UpstreamDial(d time.Duration, err error) {
	if err != nil {
		m.upstreamErrors.Inc()
		return
	}
	m.upstreamConnect.Observe(d.Seconds())
}

func (m *Metrics) Closed() { m.closed.Inc() }

// proxy.Tracker

func (m *Metrics) RefusedFrom(a netip.Addr)     { m.top.refused.add(a) }
func (m *Metrics) LoginFailedFrom(a netip.Addr) { m.top.failed.add(a) }

// stateCollector reads the table, the limiter and the certificates at
// scrape time.
type stateCollector struct{ src Sources }

var (
	descConns        = prometheus.NewDesc("imapgate_connections", "Live connections by state.", []string{"state"}, nil)
	descCount        = prometheus.NewDesc("imapgate_table_entries", "Entries in the connection table (like nf_conntrack_count).", nil, nil)
	descMax          = prometheus.NewDesc("imapgate_table_max", "Maximum entries in the connection table (like nf_conntrack_max).", nil, nil)
	descEarlyDrop    = prometheus.NewDesc("imapgate_table_early_drop_total", "Unassured entries dropped to make room (conntrack early_drop).", nil, nil)
	descInsertFailed = prometheus.NewDesc("imapgate_table_insert_failed_total", "Connections refused because the table was full (conntrack insert_failed).", nil, nil)
	descTimeouts     = prometheus.NewDesc("imapgate_table_timeouts_total", "Entries closed by their state's timeout.", nil, nil)
	descReaped       = prometheus.NewDesc("imapgate_table_reaped_total", "Closing entries reaped early because the table was 95% full.", nil, nil)
	descBytes        = prometheus.NewDesc("imapgate_bytes_total", "Bytes relayed, by direction.", []string{"direction"}, nil)
	descBansActive   = prometheus.NewDesc("imapgate_bans_active", "Bans in force after failed logins: addresses, networks, and users on one address.", nil, nil)
	descTracked      = prometheus.NewDesc("imapgate_limiter_connections", "Connections counted by the limiter.", nil, nil)
	descCertExpiry   = prometheus.NewDesc("imapgate_certificate_expiry_timestamp_seconds", "NotAfter of each served certificate, by its first name.", []string{"name"}, nil)
	descOpenFiles    = prometheus.NewDesc("imapgate_open_files", "Open file descriptors.", nil, nil)
	descOpenMax      = prometheus.NewDesc("imapgate_open_files_limit", "Soft limit on open file descriptors.", nil, nil)
	descParked       = prometheus.NewDesc("imapgate_relay_parked_directions", "Relay directions idle in the poller, holding no goroutine (two per idle session).", nil, nil)
	descParkedSilent = prometheus.NewDesc("imapgate_parked_silent_connections", "Connections waiting in the poller for their client's first TLS record, holding no goroutine.", nil, nil)
	descLogDropped   = prometheus.NewDesc("imapgate_log_lines_dropped_total", "Log lines the output could not take (syslog down, disk full); syslog and file lines go to stderr instead.", []string{"output"}, nil)

	descEarlyDropSilent = prometheus.NewDesc("imapgate_table_early_drop_silent_total", "Early drops that took a silent entry (nothing whole from the client yet); also in imapgate_table_early_drop_total.", nil, nil)
	descSilentTimeouts  = prometheus.NewDesc("imapgate_table_silent_timeouts_total", "Silent entries closed by timeouts.silent; also in imapgate_table_timeouts_total.", nil, nil)
	descKernelElements  = prometheus.NewDesc("imapgate_kernel_set_elements", "Addresses and prefixes in the nftables sets, by family.", []string{"family"}, nil)
	descKernelAdded     = prometheus.NewDesc("imapgate_kernel_additions_total", "Additions to the nftables sets, by reason (ban, escalation, prefix_escalation); dry-run additions included.", []string{"reason"}, nil)
	descKernelPackets   = prometheus.NewDesc("imapgate_kernel_dropped_packets_total", "Packets (connection attempts) dropped by imapgate's nftables rules, from their counters.", nil, nil)
	descKernelBytes     = prometheus.NewDesc("imapgate_kernel_dropped_bytes_total", "Bytes dropped by imapgate's nftables rules, from their counters.", nil, nil)
	descKernelRecreated = prometheus.NewDesc("imapgate_kernel_table_recreated_total", "Times imapgate found its nftables table flushed or deleted and made it again.", nil, nil)
	descHostCount       = prometheus.NewDesc("imapgate_host_conntrack_entries", "The host's conntrack entries (nf_conntrack_count).", nil, nil)
	descHostMax         = prometheus.NewDesc("imapgate_host_conntrack_max", "The host's conntrack maximum (nf_conntrack_max).", nil, nil)
	descHostBuckets     = prometheus.NewDesc("imapgate_host_conntrack_buckets", "The host's conntrack hash buckets (hashsize).", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descCount, descMax, descEarlyDrop, descInsertFailed, descTimeouts,
		descReaped, descBytes, descBansActive, descTracked, descCertExpiry, descOpenFiles, descOpenMax, descParked, descParkedSilent, descLogDropped,
		descEarlyDropSilent, descSilentTimeouts, descKernelElements, descKernelAdded, descKernelPackets, descKernelBytes,
		descKernelRecreated, descHostCount, descHostMax, descHostBuckets} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.src.Table
	byState := t.CountByState()
	for _, s := range conntable.States() {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(byState[s]), s.String())
	}
	st := t.Stats()
	ch <- prometheus.MustNewConstMetric(descCount, prometheus.GaugeValue, float64(t.Count()))
	ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(t.Max()))
	ch <- prometheus.MustNewConstMetric(descEarlyDrop, prometheus.CounterValue, float64(st.EarlyDrop))
	ch <- prometheus.MustNewConstMetric(descInsertFailed, prometheus.CounterValue, float64(st.InsertFailed))
	ch <- prometheus.MustNewConstMetric(descTimeouts, prometheus.CounterValue, float64(st.Timeout))
	ch <- prometheus.MustNewConstMetric(descReaped, prometheus.CounterValue, float64(st.Reaped))
	ch <- prometheus.MustNewConstMetric(descEarlyDropSilent, prometheus.CounterValue, float64(st.EarlyDropSilent))
	ch <- prometheus.MustNewConstMetric(descSilentTimeouts, prometheus.CounterValue, float64(st.SilentTimeout))
	if c.src.Kernel != nil {
		if ks, ok := c.src.Kernel(); ok {
			ch <- prometheus.MustNewConstMetric(descKernelElements, prometheus.GaugeValue, float64(ks.Elements4), "ipv4")
			ch <- prometheus.MustNewConstMetric(descKernelElements, prometheus.GaugeValue, float64(ks.Elements6), "ipv6")
			for _, r := range []string{kernel.ReasonBan, kernel.ReasonEscalation, kernel.ReasonPrefixEscalation} {
				ch <- prometheus.MustNewConstMetric(descKernelAdded, prometheus.CounterValue, float64(ks.Added[r]), r)
			}
			ch <- prometheus.MustNewConstMetric(descKernelPackets, prometheus.CounterValue, float64(ks.Packets))
			ch <- prometheus.MustNewConstMetric(descKernelBytes, prometheus.CounterValue, float64(ks.Bytes))
			ch <- prometheus.MustNewConstMetric(descKernelRecreated, prometheus.CounterValue, float64(ks.Recreated))
		}
	}
	if c.src.Conntrack != nil {
		if h, ok := c.src.Conntrack(); ok {
			ch <- prometheus.MustNewConstMetric(descHostCount, prometheus.GaugeValue, float64(h.Count))
			ch <- prometheus.MustNewConstMetric(descHostMax, prometheus.GaugeValue, float64(h.Max))
			if h.Buckets > 0 {
				ch <- prometheus.MustNewConstMetric(descHostBuckets, prometheus.GaugeValue, float64(h.Buckets))
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.RxBytes), "from_client")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.TxBytes), "to_client")
	if l := c.src.Limiter; l != nil {
		ch <- prometheus.MustNewConstMetric(descBansActive, prometheus.GaugeValue, float64(len(l.Bans(time.Now()))))
		ch <- prometheus.MustNewConstMetric(descTracked, prometheus.GaugeValue, float64(l.Total()))
	}
	if s := c.src.Certs; s != nil {
		for name, until := range s.Expiry() {
			ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(until.Unix()), name)
		}
	}
	if c.src.Parked != nil {
		ch <- prometheus.MustNewConstMetric(descParked, prometheus.GaugeValue, float64(c.src.Parked()))
	}
	if c.src.ParkedSilent != nil {
		ch <- prometheus.MustNewConstMetric(descParkedSilent, prometheus.GaugeValue, float64(c.src.ParkedSilent()))
	}
	for output, n := range c.src.LogDropped {
		ch <- prometheus.MustNewConstMetric(descLogDropped, prometheus.CounterValue, float64(n()), output)
	}
	if n, limit, ok := openFiles(); ok {
		ch <- prometheus.MustNewConstMetric(descOpenFiles, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(descOpenMax, prometheus.GaugeValue, float64(limit))
	}
}

// openFiles counts /proc/self/fd and reads the soft limit.
func openFiles() (n int, limit uint64, ok bool) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0, false
	}
	soft, _, _ := rlimit.OpenFiles()
	return len(entries), soft, true
}
