package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"imapgate/certs"
	"imapgate/conntable"
	"imapgate/kernel"
	"imapgate/limiter"
	"imapgate/proxy"
)

type problem struct {
	key   string
	index int // element of an array table
	msg   string
}

func (c *Config) validate() []problem {
	var ps []problem
	add := func(key, format string, args ...any) {
		ps = append(ps, problem{key: key, msg: fmt.Sprintf(format, args...)})
	}
	if _, _, err := net.SplitHostPort(c.Listen.Address); err != nil {
		add("listen.address", "want host:port, got %q", c.Listen.Address)
	}
	if c.Listen.ProxyHeaderTimeout <= 0 {
		add("listen.proxy_header_timeout", "must be positive")
	}
	if c.TLS.Key != "" && c.TLS.Cert == "" {
		add("tls.key", "set without tls.cert")
	}
	if _, err := certs.TLSVersion(c.TLS.MinVersion); err != nil {
		add("tls.min_version", "%v", err)
	}
	for i, p := range c.TLS.SNI {
		if p.Cert == "" {
			ps = append(ps, problem{"tls.sni.cert", i, "required"})
		}
	}
	ps = append(ps, c.validateUpstream()...)
	for key, v := range map[string]int{"login.max_line": c.Login.MaxLine, "login.max_literal": c.Login.MaxLiteral} {
		if v < 1024 || v > 1<<20 {
			add(key, "must be between 1024 and 1048576, got %d", v)
		}
	}
	if c.Login.MaxCommands < 1 {
		add("login.max_commands", "must be at least 1, got %d", c.Login.MaxCommands)
	}
	for key, d := range map[string]Duration{"timeouts.handshake": c.Timeouts.Handshake, "timeouts.preauth": c.Timeouts.Preauth,
		"timeouts.closing": c.Timeouts.Closing, "timeouts.silent": c.Timeouts.Silent} {
		if d <= 0 {
			add(key, "must be positive")
		}
	}
	if c.Timeouts.Established.D() < time.Minute {
		add("timeouts.established", "must be at least 1m (IMAP IDLE clients re-issue IDLE every 29m), got %s", c.Timeouts.Established.D())
	}
	if c.Table.Max < 1 {
		add("table.max", "must be at least 1, got %d", c.Table.Max)
	}
	if c.Table.Buckets < 0 || c.Table.Buckets > 1<<24 {
		add("table.buckets", "must be between 0 (max/4) and 16777216, got %d", c.Table.Buckets)
	}
	ps = append(ps, c.validateLimits()...)
	ps = append(ps, c.validateLog()...)
	if e := c.Kernel.Escalation; e.Refusals < 0 {
		add("kernel.escalation.refusals", "must not be negative (0 turns escalation off), got %d", e.Refusals)
	} else if e.Refusals > 0 && (e.Window <= 0 || e.First <= 0 || e.Max < e.First) {
		add("kernel.escalation", "window and first must be positive and max at least first when refusals is set")
	}
	if a := c.Admin.Address; a != "" && !strings.HasPrefix(a, "unix:") {
		host, _, err := net.SplitHostPort(a)
		ip, perr := netip.ParseAddr(host)
		switch {
		case err != nil:
			add("admin.address", "want host:port, unix:/path or \"\", got %q", a)
		case (perr != nil || !ip.IsLoopback()) && host != "localhost" && !c.Admin.AllowPublic:
			add("admin.address", "%q is not a loopback address: metrics and the admin endpoint would be public; set admin.allow_public = true to mean it", a)
		}
	}
	return ps
}

func (c *Config) validateUpstream() []problem {
	var ps []problem
	u := c.Upstream
	switch u.Mode {
	case "tcp":
	case "exec":
		if len(u.Exec) != 3 {
			ps = append(ps, problem{"upstream.exec", 0, fmt.Sprintf("want [imaplogin, imapd, maildir], got %q", u.Exec)})
		}
		if u.ProxyProtocol != "" || u.TLS {
			ps = append(ps, problem{"upstream.mode", 0, "exec mode takes neither a PROXY header nor TLS: courier gets the client's address in its environment"})
		}
	default:
		ps = append(ps, problem{"upstream.mode", 0, fmt.Sprintf("must be \"tcp\" or \"exec\", got %q", u.Mode)})
	}
	embedded := u.Address == "embedded"
	if !embedded {
		if _, _, err := net.SplitHostPort(u.Address); err != nil {
			ps = append(ps, problem{"upstream.address", 0, fmt.Sprintf("want host:port or \"embedded\", got %q", u.Address)})
		}
	}
	switch u.ProxyProtocol {
	case "", "v1", "v2":
	default:
		ps = append(ps, problem{"upstream.proxy_protocol", 0, fmt.Sprintf("must be \"\", \"v1\" or \"v2\", got %q", u.ProxyProtocol)})
	}
	if embedded && (u.ProxyProtocol != "" || u.TLS) {
		ps = append(ps, problem{"upstream.address", 0, "the embedded server takes neither a PROXY header nor TLS"})
	}
	if !u.TLS && (u.TLSServerName != "" || u.TLSCAFile != "") {
		ps = append(ps, problem{"upstream.tls", 0, "tls_server_name and tls_ca_file need tls = true"})
	}
	if u.ConnectTimeout <= 0 {
		ps = append(ps, problem{"upstream.connect_timeout", 0, "must be positive"})
	}
	if u.GreetingTimeout <= 0 {
		ps = append(ps, problem{"upstream.greeting_timeout", 0, "must be positive"})
	}
	return ps
}

func (c *Config) validateLimits() []problem {
	var ps []problem
	add := func(key string, index int, format string, args ...any) {
		ps = append(ps, problem{key, index, fmt.Sprintf(format, args...)})
	}
	l := c.Limits
	for key, v := range map[string]int{"max_connections": l.MaxConnections, "max_per_ip": l.MaxPerIP,
		"max_preauth_per_ip": l.MaxPreauthPerIP, "max_per_prefix": l.MaxPerPrefix, "max_per_user_ip": l.MaxPerUserIP,
		"rate_entries": l.RateEntries} {
		if v < 0 {
			add("limits."+key, 0, "must not be negative (0 means unlimited), got %d", v)
		}
	}
	if l.MaxPerIP > 0 && l.MaxPreauthPerIP > l.MaxPerIP {
		add("limits.max_preauth_per_ip", 0, "%d is above max_per_ip %d and could never apply", l.MaxPreauthPerIP, l.MaxPerIP)
	}
	for name, a := range l.Action {
		r, ok := limiter.ParseReason(name)
		if !ok {
			add("limits.action."+name, 0, "no such limit (known: %s)", reasonList())
			continue
		}
		act, ok := limiter.ParseAction(a)
		switch {
		case !ok:
			add("limits.action."+name, 0, "must be \"close\", \"bye\" or \"wait\", got %q", a)
		case act == limiter.Wait && r != limiter.MaxPreauthPerIP:
			add("limits.action."+name, 0, "\"wait\" applies only to max_preauth_per_ip")
		case act == limiter.Close && r == limiter.MaxPerUserIP:
			add("limits.action."+name, 0, "max_per_user_ip is checked at login and always answers NO [LIMIT]; use \"bye\"")
		}
	}
	for _, name := range l.DryRun {
		if _, ok := limiter.ParseReason(name); !ok {
			add("limits.dry_run", 0, "no such limit %q (known: %s)", name, reasonList())
		}
	}
	a := l.AuthFailures
	if a.Failures < 0 || a.PrefixFailures < 0 {
		add("limits.auth_failures", 0, "failure counts must not be negative")
	}
	if (a.Failures > 0 || a.PrefixFailures > 0) && (a.Window <= 0 || a.BanTime <= 0) {
		add("limits.auth_failures", 0, "window and ban_time must be positive when failures is set")
	}
	for i, o := range l.Override {
		if !o.CIDR.IsValid() {
			add("limits.override.cidr", i, "required in every [[limits.override]]")
		}
	}
	if len(ps) == 0 {
		p := c.Policy()
		if err := p.Validate(); err != nil {
			add("limits", 0, "%v", err)
		}
	}
	return ps
}

func reasonList() string {
	var names []string
	for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
		names = append(names, r.String())
	}
	return strings.Join(names, ", ")
}

func (c *Config) validateLog() []problem {
	o := c.Log.Output
	switch {
	case o == "stderr", o == "syslog":
	case strings.HasPrefix(o, "file:"), strings.HasPrefix(o, "syslog:"):
		kind, path, _ := strings.Cut(o, ":")
		if !strings.HasPrefix(path, "/") {
			return []problem{{"log.output", 0, fmt.Sprintf("%s: needs an absolute path, got %q", kind, o)}}
		}
	default:
		return []problem{{"log.output", 0, fmt.Sprintf("must be \"stderr\", \"syslog\", \"syslog:/socket\" or \"file:/path\", got %q", o)}}
	}
	if c.Log.Tag == "" {
		return []problem{{"log.tag", 0, "must not be empty"}}
	}
	return nil
}

// Policy converts [limits] for the limiter.
func (c *Config) Policy() limiter.Policy {
	l := c.Limits
	base := limiter.Limits{
		MaxConnections: l.MaxConnections, MaxPerIP: l.MaxPerIP, MaxPreauthPerIP: l.MaxPreauthPerIP,
		MaxPerPrefix: l.MaxPerPrefix, MaxPerUserIP: l.MaxPerUserIP,
		RatePerIP: limiter.Rate(l.RatePerIP), RatePerPrefix: limiter.Rate(l.RatePerPrefix),
	}
	p := limiter.DefaultPolicy()
	p.Limits = base
	p.IPv4Prefix, p.IPv6Prefix = l.IPv4Prefix, l.IPv6Prefix
	p.Allow, p.Deny, p.Exempt = prefixes(l.Allow), prefixes(l.Deny), prefixes(l.Exempt)
	for name, a := range l.Action {
		if r, ok := limiter.ParseReason(name); ok {
			if act, ok := limiter.ParseAction(a); ok {
				p.Action[r] = act
			}
		}
	}
	for _, name := range l.DryRun {
		if r, ok := limiter.ParseReason(name); ok {
			p.DryRun[r] = true
		}
	}
	a := l.AuthFailures
	p.Penalty = limiter.Penalty{Failures: a.Failures, PrefixFailures: a.PrefixFailures, Window: a.Window.D(),
		BanTime: a.BanTime.D(), Delay: a.Delay.D(), MaxDelay: a.MaxDelay.D()}
	for _, o := range l.Override {
		lim := base
		set := func(dst *int, v *int) {
			if v != nil {
				*dst = *v
			}
		}
		set(&lim.MaxConnections, o.MaxConnections)
		set(&lim.MaxPerIP, o.MaxPerIP)
		set(&lim.MaxPreauthPerIP, o.MaxPreauthPerIP)
		set(&lim.MaxPerPrefix, o.MaxPerPrefix)
		set(&lim.MaxPerUserIP, o.MaxPerUserIP)
		if o.RatePerIP != nil {
			lim.RatePerIP = limiter.Rate(*o.RatePerIP)
		}
		if o.RatePerPrefix != nil {
			lim.RatePerPrefix = limiter.Rate(*o.RatePerPrefix)
		}
		p.Overrides = append(p.Overrides, limiter.Override{Prefix: o.CIDR.Prefix, Limits: lim})
	}
	return p
}

func prefixes(ps []Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Prefix
	}
	return out
}

// TableConfig converts [table] and [timeouts].
func (c *Config) TableConfig() conntable.Config {
	var t conntable.Config
	t.Max, t.Buckets = c.Table.Max, c.Table.Buckets
	t.Timeouts[conntable.Handshake] = c.Timeouts.Handshake.D()
	t.Timeouts[conntable.Preauth] = c.Timeouts.Preauth.D()
	t.Timeouts[conntable.Established] = c.Timeouts.Established.D()
	t.Timeouts[conntable.Closing] = c.Timeouts.Closing.D()
	t.Silent = c.Timeouts.Silent.D()
	return t
}

// Escalation converts [kernel.escalation].
func (c *Config) Escalation() kernel.Escalation {
	e := c.Kernel.Escalation
	return kernel.Escalation{Refusals: e.Refusals, Window: e.Window.D(), First: e.First.D(), Max: e.Max.D()}
}

// LoginBounds converts [login].
func (c *Config) LoginBounds() proxy.Login {
	return proxy.Login{MaxLine: c.Login.MaxLine, MaxLiteral: c.Login.MaxLiteral, MaxCommands: c.Login.MaxCommands,
		GreetingTimeout: c.Upstream.GreetingTimeout.D(), NoUpstreamID: !c.Upstream.SendID}
}

// CertSources lists the client-side certificates, default first.
func (c *Config) CertSources() ([]certs.Source, error) {
	if c.TLS.Cert == "" {
		return nil, nil
	}
	out := []certs.Source{{Cert: c.TLS.Cert, Key: c.TLS.Key}}
	for _, p := range c.TLS.SNI {
		out = append(out, certs.Source{Cert: p.Cert, Key: p.Key})
	}
	if c.TLS.CourierSNI {
		more, err := certs.CourierSNI(c.TLS.Cert)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}
