// Package gateway wires imapgate together from a config.Config, the same
// way for cmd/imapgate and for the integration tests: the certificate
// store, the connection table, the limiter, the upstream and the proxy,
// and the PROXY-header policy of the listeners. A reload builds a whole
// new Snapshot, checks all of it, and only then puts it in force.
package gateway

import (
	"net/netip"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/conntable"
	"imapgate/kernel"
	"imapgate/limiter"
	"imapgate/proxy"
)

// Policy converts [limits] for the limiter.
func Policy(c *config.Config) limiter.Policy {
	l := c.Limits
	base := limiter.Limits{
		MaxConnections: l.MaxConnections, MaxPerIP: l.MaxPerIP, MaxPreauthPerIP: l.MaxPreauthPerIP,
		MaxPerPrefix: l.MaxPerPrefix, MaxPerUserIP: l.MaxPerUserIP,
		RatePerIP: limiter.Rate(l.RatePerIP), RatePerPrefix: limiter.Rate(l.RatePerPrefix),
	}
	var p limiter.Policy
	p.Limits = base
	p.IPv4Prefix, p.IPv6Prefix = l.IPv4Prefix, l.IPv6Prefix
	p.Allow, p.Deny, p.Exempt = prefixes(l.Allow), prefixes(l.Deny), prefixes(l.Exempt)
	// The defaults' actions first: a file's [limits.action] may name some.
	for _, actions := range []map[string]string{config.Default().Limits.Action, l.Action} {
		for name, a := range actions {
			if r, ok := limiter.ParseReason(name); ok {
				if act, ok := limiter.ParseAction(a); ok {
					p.Action[r] = act
				}
			}
		}
	}
	for _, name := range l.DryRun {
		if r, ok := limiter.ParseReason(name); ok {
			p.DryRun[r] = true
		}
	}
	a := l.AuthFailures
	p.Penalty = limiter.Penalty{Failures: a.Failures, MinUsers: a.MinUsers, UserFailures: a.UserFailures,
		SprayFailures: a.SprayFailures, PrefixFailures: a.PrefixFailures, Window: a.Window.D(),
		BanTime: a.BanTime.D(), Delay: a.Delay.D(), MaxDelay: a.MaxDelay.D()}
	k := l.KnownGood
	p.KnownGood = limiter.KnownGood{MinUsers: k.MinUsers, Window: k.Window.D(),
		MaxPerIP: k.MaxPerIP, MaxPreauthPerIP: k.MaxPreauthPerIP, MaxPerPrefix: k.MaxPerPrefix,
		RatePerIP: limiter.Rate(k.RatePerIP), RatePerPrefix: limiter.Rate(k.RatePerPrefix)}
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

func prefixes(ps []config.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Prefix
	}
	return out
}

// TableConfig converts [table] and [timeouts].
func TableConfig(c *config.Config) conntable.Config {
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
func Escalation(c *config.Config) kernel.Escalation { return escalationOf(c.Kernel) }

func escalationOf(k config.Kernel) kernel.Escalation {
	e := k.Escalation
	return kernel.Escalation{Refusals: e.Refusals, Window: e.Window.D(), First: e.First.D(), Max: e.Max.D(),
		PrefixAddrs: e.PrefixAddresses}
}

// LoginBounds converts [login] and the upstream's greeting timeout and ID.
func LoginBounds(c *config.Config) proxy.Login {
	return proxy.Login{MaxLine: c.Login.MaxLine, MaxLiteral: c.Login.MaxLiteral, MaxCommands: c.Login.MaxCommands,
		GreetingTimeout: c.Upstream.GreetingTimeout.D(), NoUpstreamID: !c.Upstream.SendID}
}

// CertSources lists the client-side certificates, default first.
func CertSources(c *config.Config) ([]certs.Source, error) {
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
