package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"imapgate/cluster"
	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/kernel"
	"imapgate/limiter"
)

// Options configure the admin endpoint.
type Options struct {
	Table    *conntable.Table
	Limiter  *limiter.Limiter // nil: no limits, no bans
	Top      *Top
	Gatherer prometheus.Gatherer
	// Reload re-reads the configuration (as SIGHUP does).
	Reload func() error
	// ReopenLogs reopens the log file or reconnects to syslog (as
	// SIGUSR1 does).
	ReopenLogs func() error
	// Ready reports whether the proxy is serving (not starting, not
	// shutting down).
	Ready func() bool
	// UpstreamProblems lists upstream misconfigurations seen, each with
	// its fix (proxy.Server.UpstreamProblems).
	UpstreamProblems func() []string
	// Info adds fields to /status (listeners, upstream, config file…).
	Info func() map[string]any
	// Cluster, if set, is the cluster's status for /status (nodes alive,
	// their sessions, Redis health and latency, degraded or not).
	Cluster func(context.Context) *cluster.Status
	// Kernel, if set, says what the kernel path is (nftables on, off or
	// unavailable, and the table) and the host's conntrack fill, for /status.
	Kernel func() string
	// KernelMembers lists the nftables sets' elements ([kernel] nftables);
	// nil or an empty list when off.
	KernelMembers func(now time.Time) []kernel.Member
	// AfterUnban is called after /unban lifted a ban (the kernel path
	// removes its element at once); nil: nothing.
	AfterUnban func()
	// Logf, if set, writes a line to imapgate's log: every change made
	// here (ban, unban, kill) is logged with who asked, so the log tells a
	// manual ban from a failed-login one.
	Logf func(format string, args ...any)
	// Token, if set, lets requests from other hosts change state with
	// "Authorization: Bearer <token>". Without it only local requests
	// (loopback or the unix socket) may.
	Token string
}

// Server is the admin HTTP handler.
type Server struct {
	o     Options
	start time.Time
	mux   *http.ServeMux
	// tokenSum is Options.Token's SHA-256, compared in constant time with
	// the presented token's (hashing first hides the token's length too).
	tokenSum [sha256.Size]byte
}

// New returns the admin handler.
func New(o Options) *Server {
	s := &Server{o: o, start: time.Now(), mux: http.NewServeMux()}
	if o.Token != "" {
		s.tokenSum = sha256.Sum256([]byte(o.Token))
	}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /status", s.status)
	s.mux.HandleFunc("GET /conns", s.conns)
	s.mux.HandleFunc("GET /top", s.top)
	s.mux.HandleFunc("GET /bans", s.bans)
	s.mux.HandleFunc("GET /knowngood", s.knownGood)
	s.mux.HandleFunc("POST /kill", s.local(s.kill))
	s.mux.HandleFunc("POST /unban", s.local(s.unban))
	s.mux.HandleFunc("POST /ban", s.local(s.ban))
	s.mux.HandleFunc("POST /reload", s.local(call(o.Reload, "reloaded")))
	s.mux.HandleFunc("POST /reopen-logs", s.local(call(o.ReopenLogs, "reopened")))
	// Profiles for diagnosing CPU and memory; the admin listener is local
	// unless configured otherwise.
	s.mux.HandleFunc("GET /debug/pprof/", s.local(pprof.Index))
	s.mux.HandleFunc("GET /debug/pprof/profile", s.local(pprof.Profile))
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// local guards a state-changing handler: local requests, or the token.
func (s *Server) local(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.bearerOK(r) || isLocal(r) {
			h(w, r)
			return
		}
		http.Error(w, "changes are allowed from this host only (or with the admin token)", http.StatusForbidden)
	}
}

// bearerOK reports whether r carries "Authorization: Bearer <token>" with
// the configured token. The scheme is case-insensitive (RFC 9110 11.1); the
// token is compared in constant time.
func (s *Server) bearerOK(r *http.Request) bool {
	if s.o.Token == "" {
		return false
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1
}

func isLocal(r *http.Request) bool {
	if r.RemoteAddr == "" || r.RemoteAddr == "@" || !strings.Contains(r.RemoteAddr, ":") {
		return true // unix socket
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.o.Ready != nil && !s.o.Ready() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// Status is /status.
type Status struct {
	Uptime  string          `json:"uptime"`
	Count   int             `json:"count"`
	Max     int             `json:"max"`
	Buckets int             `json:"buckets"`
	States  map[string]int  `json:"states"`
	Stats   conntable.Stats `json:"stats"`
	Bans    int             `json:"bans"`
	// KnownGood counts the addresses and networks the known-good tier
	// gives its limits to now (learned here, or from the cluster).
	KnownGood   KnownGoodCount    `json:"known_good"`
	WouldRefuse map[string]uint64 `json:"dry_run_would_refuse,omitempty"`
	// UpstreamProblems are misconfigurations of the upstream seen since
	// start or the last reload (LOGINDISABLED, PRIVACYREQUIRED), with fixes.
	UpstreamProblems []string        `json:"upstream_problems,omitempty"`
	Cluster          *cluster.Status `json:"cluster,omitempty"`
	Kernel           string          `json:"kernel,omitempty"`
	Info             map[string]any  `json:"info,omitempty"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	t := s.o.Table
	st := Status{
		Uptime: time.Since(s.start).Round(time.Second).String(), Count: t.Count(), Max: t.Max(),
		Buckets: t.Config().Buckets, States: map[string]int{}, Stats: t.Stats(),
	}
	if s.o.UpstreamProblems != nil {
		st.UpstreamProblems = s.o.UpstreamProblems()
	}
	by := t.CountByState()
	for _, state := range conntable.States() {
		st.States[state.String()] = by[state]
	}
	if l := s.o.Limiter; l != nil {
		st.Bans = len(l.Bans(time.Now()))
		st.KnownGood.Addresses, st.KnownGood.Networks = l.KnownGoodCount(time.Now())
		for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
			if n := l.WouldRefuse(r); n > 0 {
				if st.WouldRefuse == nil {
					st.WouldRefuse = map[string]uint64{}
				}
				st.WouldRefuse[r.String()] = n
			}
		}
	}
	if s.o.Info != nil {
		st.Info = s.o.Info()
	}
	if s.o.Cluster != nil {
		st.Cluster = s.o.Cluster(r.Context())
	}
	if s.o.Kernel != nil {
		st.Kernel = s.o.Kernel()
	}
	writeJSON(w, st)
}

// filter builds a match from ?addr= ?prefix= ?user= ?state= (all optional).
func filter(r *http.Request) (func(*conntable.Entry) bool, error) {
	q := r.URL.Query()
	var addr netip.Addr
	var prefix netip.Prefix
	var state conntable.State
	var err error
	if v := q.Get("addr"); v != "" {
		if addr, err = netip.ParseAddr(v); err != nil {
			return nil, fmt.Errorf("addr: %w", err)
		}
		addr = addr.Unmap()
	}
	if v := q.Get("prefix"); v != "" {
		if prefix, err = netip.ParsePrefix(v); err != nil {
			return nil, fmt.Errorf("prefix: %w", err)
		}
	}
	hasState := q.Get("state") != ""
	if hasState {
		var ok bool
		if state, ok = conntable.ParseState(q.Get("state")); !ok {
			return nil, fmt.Errorf("state must be handshake, preauth, established or closing")
		}
	}
	user := q.Get("user")
	return func(e *conntable.Entry) bool {
		a := e.Client.Addr().Unmap()
		return (!addr.IsValid() || a == addr) && (!prefix.IsValid() || prefix.Contains(a)) &&
			(user == "" || strings.EqualFold(e.User(), user)) && (!hasState || e.State() == state)
	}, nil
}

func (s *Server) conns(w http.ResponseWriter, r *http.Request) {
	match, err := filter(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	list := s.o.Table.List(match, limit)
	if r.URL.Query().Get("format") != "text" {
		if list == nil {
			list = []conntable.Snapshot{} // [], not null: a list with nothing in it
		}
		writeJSON(w, list)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, e := range list {
		fmt.Fprintln(w, FormatEntry(e))
	}
}

// FormatEntry is one conntrack -L style line; an entry that has heard
// nothing whole from its client ends in [SILENT], as conntrack marks a
// flow without a reply [UNREPLIED].
func FormatEntry(e conntable.Snapshot) string {
	user := e.User
	if user == "" {
		user = "-"
	}
	silent := ""
	if e.Silent {
		silent = " [SILENT]"
	}
	return fmt.Sprintf("id=%d %-11s src=%s dst=%s user=%s age=%s idle=%s timeout=%s rx=%d tx=%d%s",
		e.ID, e.State, e.Client, e.Local, user, time.Since(e.Start).Round(time.Second),
		e.Idle.Round(time.Second), e.TimeoutIn.Round(time.Second), e.Rx, e.Tx, silent)
}

// TopReport is /top.
type TopReport struct {
	Connections  []Count `json:"connections"`
	Prefixes     []Count `json:"prefixes"`
	Refused      []Count `json:"refused"`
	FailedLogins []Count `json:"failed_logins"`
}

func (s *Server) top(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	if n <= 0 {
		n = 10
	}
	byAddr, byPrefix := map[string]uint64{}, map[string]uint64{}
	var policy *limiter.Policy
	if s.o.Limiter != nil {
		policy = s.o.Limiter.Policy()
	}
	s.o.Table.Range(func(e *conntable.Entry) bool {
		a := e.Client.Addr().Unmap()
		byAddr[a.String()]++
		if policy != nil {
			byPrefix[policy.PrefixOf(a).String()]++
		}
		return true
	})
	rep := TopReport{Connections: fromMap(byAddr, n), Prefixes: fromMap(byPrefix, n)}
	if s.o.Top != nil {
		rep.Refused, rep.FailedLogins = s.o.Top.refused.top(n), s.o.Top.failed.top(n)
	}
	writeJSON(w, rep)
}

func fromMap(m map[string]uint64, n int) []Count {
	out := make([]Count, 0, len(m))
	for k, v := range m {
		out = append(out, Count{k, v})
	}
	return topN(out, n)
}

// BanInfo is one entry of /bans: a ban of the limiter's, or an address
// only the kernel drops (Reason "escalation").
type BanInfo struct {
	Key string `json:"key"`
	// User is set for a user+address ban: only this user's logins from
	// Key are refused (never in the kernel's sets).
	User   string    `json:"user,omitempty"`
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`            // "ban", "escalation" or "prefix_escalation"
	Kernel bool      `json:"kernel"`            // in the nftables sets
	DryRun bool      `json:"dry_run,omitempty"` // would be in them, but for dry run
}

func (s *Server) bans(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	out := []BanInfo{}
	inKernel := map[netip.Prefix]kernel.Member{}
	if s.o.KernelMembers != nil {
		for _, m := range s.o.KernelMembers(now) {
			inKernel[m.Prefix] = m
		}
	}
	if s.o.Limiter != nil {
		for _, b := range s.o.Limiter.Bans(now) {
			var m kernel.Member
			ok := false
			if b.User == "" { // a user ban is the limiter's alone
				m, ok = inKernel[unmapPrefix(b.Key)]
				if !ok {
					_, ok = kernel.Covering(inKernel, unmapPrefix(b.Key), false) // a dropped network drops it too
				}
			}
			if ok && m.Reason == kernel.ReasonBan {
				delete(inKernel, m.Prefix)
			}
			out = append(out, BanInfo{Key: b.Key.String(), User: b.User, Until: b.Until, Reason: kernel.ReasonBan,
				Kernel: ok && !m.DryRun, DryRun: ok && m.DryRun})
		}
	}
	for _, m := range inKernel {
		out = append(out, BanInfo{Key: m.Prefix.String(), Until: m.Until, Reason: m.Reason, Kernel: !m.DryRun, DryRun: m.DryRun})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	writeJSON(w, out)
}

// KnownGoodCount is Status's count of the known-good tier.
type KnownGoodCount struct {
	Addresses int `json:"addresses"`
	Networks  int `json:"networks"`
}

// KnownGoodInfo answers GET /knowngood?addr=A: what the known-good tier
// knows of A and of its network.
type KnownGoodInfo struct {
	Addr         string     `json:"addr"`
	Network      string     `json:"network"`
	AddrUntil    *time.Time `json:"addr_until,omitempty"`    // known-good until; absent: not known-good
	NetworkUntil *time.Time `json:"network_until,omitempty"` // the same for the network
	AddrUsers    int        `json:"addr_users"`              // distinct users counted in the current window
	NetworkUsers int        `json:"network_users"`
	MinUsers     int        `json:"min_users"` // users that make it known-good; 0: the tier is off
}

func (s *Server) knownGood(w http.ResponseWriter, r *http.Request) {
	a, err := netip.ParseAddr(r.URL.Query().Get("addr"))
	if err != nil {
		http.Error(w, "knowngood needs addr=ADDRESS", http.StatusBadRequest)
		return
	}
	if s.o.Limiter == nil {
		http.Error(w, "no limiter", http.StatusNotImplemented)
		return
	}
	k := s.o.Limiter.KnownGoodOf(a, time.Now())
	out := KnownGoodInfo{Addr: a.Unmap().String(), Network: k.Prefix.String(), AddrUsers: k.AddrUsers,
		NetworkUsers: k.PrefixUsers, MinUsers: k.MinUsers}
	if !k.AddrUntil.IsZero() {
		out.AddrUntil = &k.AddrUntil
	}
	if !k.PrefixUntil.IsZero() {
		out.NetworkUntil = &k.PrefixUntil
	}
	writeJSON(w, out)
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() {
		return netip.PrefixFrom(a.Unmap(), max(p.Bits()-96, 0)).Masked()
	}
	return p.Masked()
}

// kill closes one entry (?id=) or every entry of an address (?addr=), as
// conntrack -D does.
func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n := 0
	switch {
	case q.Get("id") != "":
		id, err := strconv.ParseUint(q.Get("id"), 10, 64)
		if err != nil {
			http.Error(w, "id: not a number", http.StatusBadRequest)
			return
		}
		if s.o.Table.Delete(id) {
			n = 1
		}
	case q.Get("addr") != "" || q.Get("prefix") != "" || q.Get("user") != "":
		match, err := filter(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n = s.o.Table.KillAll(conntable.Deleted, match)
	default:
		http.Error(w, "give id=, addr=, prefix= or user=", http.StatusBadRequest)
		return
	}
	s.logf(r, "killed %d %s (%s)", n, plural(n, "connection"), describeQuery(q, "id", "addr", "prefix", "user"))
	writeJSON(w, map[string]int{"killed": n})
}

func (s *Server) unban(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query().Get("addr")
	p, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			http.Error(w, "addr: want an address or CIDR", http.StatusBadRequest)
			return
		}
		a = a.Unmap()
		p = netip.PrefixFrom(a, a.BitLen())
	}
	var lifted, pending bool
	if s.o.Limiter != nil {
		pending = s.o.Limiter.SharedDegraded()
	}
	switch user := r.URL.Query().Get("user"); {
	case s.o.Limiter == nil:
	case user != "":
		if !p.IsSingleIP() {
			http.Error(w, "user: a user ban is on one address, not a CIDR", http.StatusBadRequest)
			return
		}
		lifted = s.o.Limiter.UnbanUser(p.Addr(), user)
	default:
		lifted = s.o.Limiter.Unban(p)
	}
	if lifted && s.o.AfterUnban != nil {
		s.o.AfterUnban()
	}
	what := banned(p, r.URL.Query().Get("user"))
	out := map[string]any{"lifted": lifted}
	switch {
	case lifted && pending:
		s.logf(r, "unbanned %s on this node; on the others once Redis answers (cluster degraded)", what)
	case lifted:
		s.logf(r, "unbanned %s", what)
	default:
		// An address inside a banned network has no ban of its own to
		// lift: name the network, which is what still refuses it.
		if by, ok := s.coveringBan(p); ok {
			out["banned_by"] = by.String()
			s.logf(r, "unban %s: no ban to lift; the network %s is banned", what, by)
		} else {
			s.logf(r, "unban %s: no ban to lift", what)
		}
	}
	if pending {
		out["cluster"] = clusterPending
	}
	writeJSON(w, out)
}

// coveringBan returns a network ban in force that contains p, if any.
func (s *Server) coveringBan(p netip.Prefix) (netip.Prefix, bool) {
	if s.o.Limiter == nil {
		return netip.Prefix{}, false
	}
	for _, b := range s.o.Limiter.Bans(time.Now()) {
		if b.User == "" && b.Key.Bits() < p.Bits() && b.Key.Contains(p.Addr()) {
			return b.Key, true
		}
	}
	return netip.Prefix{}, false
}

// clusterPending is what ban and unban answer while the cluster is
// degraded (Limiter.SharedDegraded).
const clusterPending = "degraded: in force on this node now, on the other nodes once Redis answers again"

// ban bans ?addr= (an address or CIDR; with ?user=, that user on the
// address) for ?for= (default the policy's ban_time); with a cluster, on
// every node.
func (s *Server) ban(w http.ResponseWriter, r *http.Request) {
	if s.o.Limiter == nil {
		http.Error(w, "no limiter", http.StatusNotImplemented)
		return
	}
	q := r.URL.Query()
	p, err := netip.ParsePrefix(q.Get("addr"))
	if err != nil {
		a, aerr := netip.ParseAddr(q.Get("addr"))
		if aerr != nil {
			http.Error(w, "addr: want an address or CIDR", http.StatusBadRequest)
			return
		}
		a = a.Unmap()
		p = netip.PrefixFrom(a, a.BitLen())
	}
	d := s.o.Limiter.Policy().Penalty.BanTime
	if v := q.Get("for"); v != "" {
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			http.Error(w, "for: want a positive duration (10m)", http.StatusBadRequest)
			return
		}
	}
	if d <= 0 {
		d = 10 * time.Minute
	}
	b := limiter.Ban{Key: p.Masked(), User: q.Get("user"), Until: time.Now().Add(d)}
	if b.User != "" && !p.IsSingleIP() {
		http.Error(w, "user: a user ban is on one address, not a CIDR", http.StatusBadRequest)
		return
	}
	// Exempt addresses are never refused, bans included (a webmail
	// server's users must not get it banned): a ban inside limits.exempt
	// would be listed and never enforced, so it is not made.
	covering, inside := exemptOverlap(s.o.Limiter.Policy().Exempt, b.Key)
	if covering.IsValid() {
		http.Error(w, fmt.Sprintf("%s is in limits.exempt (%s): exempt addresses are never refused, so the ban would not be enforced; take it out of exempt first",
			banned(b.Key, ""), covering), http.StatusConflict)
		return
	}
	pending := s.o.Limiter.SharedDegraded()
	what, until := banned(b.Key, b.User), b.Until.UTC().Format(time.RFC3339)
	if err := s.o.Limiter.Ban(b); err != nil {
		s.logf(r, "banned %s until %s (%s), on this node only: the cluster could not be told: %v", what, until, d, err)
		http.Error(w, "banned here; the cluster could not be told: "+err.Error(), http.StatusBadGateway)
		return
	}
	out := map[string]any{"banned": b.Key.String(), "until": b.Until}
	if len(inside) > 0 {
		out["exempt"] = fmt.Sprintf("not refused inside the ban: %s (limits.exempt)", prefixList(inside))
	}
	if !b.Key.IsSingleIP() && s.o.Limiter.Policy().KnownGood.MinUsers > 0 {
		// The tier keeps no list of its addresses (hashes only), so the
		// answer cannot name them.
		out["known_good"] = "not refused inside the ban: known-good addresses (an office behind NAT; imapgate ctl knowngood ADDR tells); ban such an address by itself to refuse it"
	}
	if pending {
		s.logf(r, "banned %s until %s (%s) on this node; on the others once Redis answers (cluster degraded)", what, until, d)
		out["cluster"] = clusterPending
	} else {
		s.logf(r, "banned %s until %s (%s)", what, until, d)
	}
	writeJSON(w, out)
}

// exemptOverlap compares a ban's key k with limits.exempt: covering is
// an exempt prefix that holds all of k (the zero Prefix if none), inside
// the exempt prefixes k holds, which stay served under the ban.
func exemptOverlap(exempt []netip.Prefix, k netip.Prefix) (covering netip.Prefix, inside []netip.Prefix) {
	for _, e := range exempt {
		switch {
		case e.Bits() <= k.Bits() && e.Contains(k.Addr()):
			return e, nil
		case k.Bits() < e.Bits() && k.Contains(e.Addr()):
			inside = append(inside, e)
		}
	}
	return netip.Prefix{}, inside
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// logf logs a change made through the endpoint, with who asked (the
// request's peer; the unix socket's has no address).
func (s *Server) logf(r *http.Request, format string, args ...any) {
	if s.o.Logf == nil {
		return
	}
	from := r.RemoteAddr
	if from == "" || from == "@" {
		from = "the local socket"
	}
	s.o.Logf("imapgate: ctl: "+format+", asked from %s", append(args, from)...)
}

// banned names what a ban is on: "192.0.2.7", "192.0.2.0/24", or
// "user bob on 192.0.2.7" (the name escaped as the log's user names are).
func banned(p netip.Prefix, user string) string {
	what := p.String()
	if p.IsSingleIP() {
		what = p.Addr().String()
	}
	if user != "" {
		what = "user " + string(courierlog.AppendUser(nil, user)) + " on " + what
	}
	return what
}

// describeQuery writes the given query parameters that are set, "k=v k=v".
func describeQuery(q url.Values, keys ...string) string {
	var parts []string
	for _, k := range keys {
		if v := q.Get(k); v != "" {
			parts = append(parts, k+"="+string(courierlog.AppendUser(nil, v)))
		}
	}
	return strings.Join(parts, " ")
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// call answers a request by calling f: {done: true}, or the error with
// 422 Unprocessable Entity.
func call(f func() error, done string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if f == nil {
			http.Error(w, "not available", http.StatusNotImplemented)
			return
		}
		err := f()
		var partial interface{ Warnings() []string }
		switch {
		case errors.As(err, &partial):
			// Done, but for the parts it names.
			writeJSON(w, map[string]any{done: true, "not_applied": partial.Warnings()})
		case err != nil:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnprocessableEntity)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		default:
			writeJSON(w, map[string]bool{done: true})
		}
	}
}
