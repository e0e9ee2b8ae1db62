package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
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
	switch c.TLS.MinVersion {
	case "", "1.2", "1.3":
	default:
		add("tls.min_version", "TLS version must be \"1.2\" or \"1.3\", got %q", c.TLS.MinVersion)
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
	ps = append(ps, c.validateCluster()...)
	if !validNftName(c.Kernel.Table) {
		add("kernel.table", "want a letter, then up to 31 letters, digits or underscores (an nftables table name), got %q", c.Kernel.Table)
	}
	if c.Kernel.Escalation.PrefixAddresses < 0 {
		add("kernel.escalation.prefix_addresses", "must not be negative (0: only per-prefix limit refusals escalate a prefix), got %d", c.Kernel.Escalation.PrefixAddresses)
	}
	if e := c.Kernel.Escalation; e.Refusals < 0 {
		add("kernel.escalation.refusals", "must not be negative (0 turns escalation off), got %d", e.Refusals)
	} else if e.Refusals > 0 {
		if e.Window <= 0 {
			add("kernel.escalation.window", "must be positive when refusals is set, got %s", e.Window.D())
		}
		if e.First <= 0 {
			add("kernel.escalation.first", "must be positive when refusals is set, got %s", e.First.D())
		} else if e.Max < e.First {
			add("kernel.escalation.max", "must be at least first (%s), got %s", e.First.D(), e.Max.D())
		}
	}
	// The watch reads three /proc files each time; below a second that
	// costs CPU for nothing (a typo of "1ms" for "1m" took 12 % of a core,
	// "1ns" all of one) and the table cannot fill faster than it warns.
	if d := c.Kernel.ConntrackWatch.D(); d != 0 && (d < time.Second || d > time.Hour) {
		add("kernel.conntrack_watch", "must be 0s (off) or between 1s and 1h, got %s", d)
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

// validNftName reports whether s is a table name nft(8) takes unquoted
// (an identifier: a letter, then letters, digits, "_", "/", "."; narrowed
// here to letters, digits and "_", and to 32 bytes of the kernel's 256).
func validNftName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '_'):
		default:
			return false
		}
	}
	return true
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
		if !slices.Contains(LimitNames, name) {
			add("limits.action."+name, 0, "no such limit (known: %s)", strings.Join(LimitNames, ", "))
			continue
		}
		switch {
		case a != "close" && a != "bye" && a != "wait":
			add("limits.action."+name, 0, "must be \"close\", \"bye\" or \"wait\", got %q", a)
		case a == "wait" && name != "max_preauth_per_ip":
			add("limits.action."+name, 0, "\"wait\" applies only to max_preauth_per_ip")
		case a == "close" && name == "max_per_user_ip":
			add("limits.action."+name, 0, "max_per_user_ip is checked at login and always answers NO [LIMIT]; use \"bye\"")
		}
	}
	for _, name := range l.DryRun {
		if !slices.Contains(LimitNames, name) {
			add("limits.dry_run", 0, "no such limit %q (known: %s)", name, strings.Join(LimitNames, ", "))
		}
	}
	if l.IPv4Prefix < 1 || l.IPv4Prefix > 32 {
		add("limits.ipv4_prefix", 0, "must be 1..32, got %d", l.IPv4Prefix)
	}
	if l.IPv6Prefix < 1 || l.IPv6Prefix > 128 {
		add("limits.ipv6_prefix", 0, "must be 1..128, got %d", l.IPv6Prefix)
	}
	a := l.AuthFailures
	for key, v := range map[string]int{"failures": a.Failures, "user_failures": a.UserFailures,
		"spray_failures": a.SprayFailures, "prefix_failures": a.PrefixFailures} {
		if v < 0 {
			add("limits.auth_failures."+key, 0, "must not be negative (0 turns it off), got %d", v)
		}
	}
	if (a.Failures > 0 || a.UserFailures > 0 || a.SprayFailures > 0 || a.PrefixFailures > 0) && (a.Window <= 0 || a.BanTime <= 0) {
		add("limits.auth_failures", 0, "window and ban_time must be positive when a failure count is set")
	}
	if a.MinUsers < 1 || a.MinUsers > MaxMinUsers {
		add("limits.auth_failures.min_users", 0, "must be 1..%d, got %d", MaxMinUsers, a.MinUsers)
	}
	k := l.KnownGood
	if k.MinUsers < 0 || k.MinUsers > MaxKnownGoodUsers {
		add("limits.known_good.min_users", 0, "must be 0 (off) or 1..%d, got %d", MaxKnownGoodUsers, k.MinUsers)
	}
	if k.MinUsers > 0 && k.Window <= 0 {
		add("limits.known_good.window", 0, "must be positive when min_users is set")
	}
	for key, v := range map[string]int{"max_per_ip": k.MaxPerIP, "max_preauth_per_ip": k.MaxPreauthPerIP, "max_per_prefix": k.MaxPerPrefix} {
		if v < 0 {
			add("limits.known_good."+key, 0, "must not be negative (0 means unlimited), got %d", v)
		}
	}
	for i, o := range l.Override {
		if !o.CIDR.IsValid() {
			add("limits.override.cidr", i, "required in every [[limits.override]]")
		}
	}
	return ps
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

func (c *Config) validateCluster() []problem {
	cl := c.Cluster
	var ps []problem
	add := func(key, format string, args ...any) {
		ps = append(ps, problem{key: key, msg: fmt.Sprintf(format, args...)})
	}
	if cl.Redis == "" {
		// [cluster] without redis is off: a key set there to other than
		// its default is a mistake (redis forgotten, or left empty), not
		// a setting. (Defaults written out, as in imapgate.example.toml,
		// are fine.)
		v, d := reflect.ValueOf(cl), reflect.ValueOf(Default().Cluster)
		for i := range v.NumField() {
			key := "cluster." + v.Type().Field(i).Tag.Get("toml")
			if key != "cluster.redis" && c.IsSet(key) && !reflect.DeepEqual(v.Field(i).Interface(), d.Field(i).Interface()) {
				add(key, "%s is set but cluster.redis is empty: [cluster] is off without it", key)
			}
		}
		return ps
	}
	if msg := RedisURLProblem(cl.Redis); msg != "" {
		add("cluster.redis", "%s", msg)
	}
	if cl.KeyPrefix == "" || strings.ContainsAny(cl.KeyPrefix, "{} ") {
		add("cluster.key_prefix", "must be non-empty, without braces or spaces, got %q", cl.KeyPrefix)
	}
	if strings.ContainsAny(cl.Node, " :") {
		add("cluster.node", "must not contain spaces or colons, got %q", cl.Node)
	}
	if d := cl.Timeout.D(); d < time.Millisecond || d > time.Second {
		add("cluster.timeout", "must be between 1ms and 1s, got %s", d)
	}
	if d := cl.NodeTTL.D(); d < time.Second {
		add("cluster.node_ttl", "must be at least 1s, got %s", d)
	}
	if d := cl.OverLimitHold.D(); d < time.Millisecond || d > time.Minute {
		add("cluster.over_limit_hold", "must be between 1ms and 1m, got %s", d)
	}
	if cl.TicketKeys && cl.TicketRotation.D() < time.Minute {
		add("cluster.ticket_rotation", "must be at least 1m, got %s", cl.TicketRotation.D())
	}
	if cl.TLSCAFile != "" && !strings.HasPrefix(cl.Redis, "rediss://") {
		add("cluster.tls_ca_file", "needs a rediss:// URL")
	}
	return ps
}

// RedisURLKeys are the query keys a cluster.redis URL may carry: addr
// (repeatable: more sentinels, or more nodes of a Redis Cluster),
// master_set (Sentinel's name of the master), sentinel_username and
// sentinel_password (the sentinels' own ACL user; without them the
// sentinels are reached without AUTH), db (a database number; not with
// Redis Cluster). Package cluster turns the URL into its client's options.
var RedisURLKeys = []string{"addr", "master_set", "sentinel_username", "sentinel_password", "db"}

// RedisURLProblem says what is wrong with a cluster.redis URL ("" if
// nothing), without quoting its password.
func RedisURLProblem(s string) string {
	u, err := url.Parse(s)
	switch {
	case slashInUserinfo(s):
		return slashHint
	case err != nil && strings.Contains(err.Error(), "invalid port"):
		return "the port is not a number; want redis://[user:password@]host:port[?key=value…]"
	case err != nil && strings.Contains(err.Error(), "invalid URL escape"):
		return badEscapeProblem(s)
	case err != nil: // url's message would quote the password
		return "not a URL; want redis://[user:password@]host:port[?key=value…], rediss://… or unix://"
	case u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix":
		return fmt.Sprintf("scheme %q: want redis://, rediss:// or unix://", u.Scheme)
	case u.Scheme != "unix" && u.Hostname() == "":
		return "no host"
	}
	if p := u.Port(); u.Scheme != "unix" && p != "" && !validPort(p) {
		return fmt.Sprintf("port %s: want 1 to 65535", p)
	}
	if msg := unixURLProblem(u); msg != "" {
		return msg
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil { // u.Query drops such a pair silently
		if strings.Contains(err.Error(), "invalid URL escape") {
			return "a % that starts no escape in the query (write a % in a value as %25)"
		}
		return "the query: want key=value pairs joined by &"
	}
	db, msg := pathDB(u)
	if msg != "" {
		return msg
	}
	q := u.Query()
	for k, vs := range q {
		if !slices.Contains(RedisURLKeys, k) {
			return fmt.Sprintf("unknown query key %q (known: %s)", k, strings.Join(RedisURLKeys, ", "))
		}
		if k != "addr" && len(vs) > 1 {
			return fmt.Sprintf("query key %q given %d times", k, len(vs))
		}
	}
	for _, a := range q["addr"] {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Sprintf("addr=%q: want host:port", a)
		} else if !validPort(port) {
			return fmt.Sprintf("addr=%q: port %s: want 1 to 65535", a, port)
		}
	}
	if n, err := strconv.Atoi(q.Get("db")); q.Has("db") && (err != nil || n < 0) {
		return fmt.Sprintf("db=%q: want a database number", q.Get("db"))
	} else if q.Has("db") && db != "" {
		return fmt.Sprintf("a database number twice: the path /%s and db=%s; give one", db, q.Get("db"))
	} else if q.Has("db") {
		db = q.Get("db")
	}
	if n, _ := strconv.Atoi(db); n != 0 && q.Has("addr") && !q.Has("master_set") {
		return fmt.Sprintf("database %d with several addresses and no master_set (a Redis Cluster's nodes): "+
			"Redis Cluster has only database 0", n)
	}
	if (q.Has("sentinel_username") || q.Has("sentinel_password")) && q.Get("master_set") == "" {
		return "sentinel_username and sentinel_password need master_set (Sentinel)"
	}
	if q.Has("sentinel_username") && !q.Has("sentinel_password") {
		return "sentinel_username without sentinel_password"
	}
	return ""
}

// pathDB reads the database number of a redis:// or rediss:// URL's path
// (redis://host:port/2; none, or "/", is 0), or says what is wrong with
// the path. A unix:// URL's path is the socket's (its database: db=).
func pathDB(u *url.URL) (db, problem string) {
	p := strings.TrimPrefix(u.Path, "/")
	const want = "want a database number (redis://host:port/2, or db=2) or none"
	switch {
	case u.Scheme == "unix" || p == "":
		return "", ""
	case strings.Contains(p, "/"):
		return "", fmt.Sprintf("the URL's path %q has more than one part: %s", u.Path, want)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 0 {
		return "", fmt.Sprintf("the URL's path %q: %s", u.Path, want)
	}
	return p, ""
}

const slashHint = "an @ after a / that ends host:port: is there a / in the user or password? write it there as %2F"

// slashInUserinfo reports an @ after the first / that follows
// "redis://" or "rediss://" (in what url.Parse takes for the port or the
// path, where a database number goes): a password with a / in it, which
// the message must not quote. (A unix:// URL's path is a file's, which
// may hold an @.)
func slashInUserinfo(s string) bool {
	rest, _, _ := strings.Cut(s, "?")
	scheme, rest, ok := strings.Cut(rest, "://")
	if !ok || scheme != "redis" && scheme != "rediss" {
		return false
	}
	_, path, ok := strings.Cut(rest, "/")
	return ok && strings.Contains(path, "@")
}

// badEscapeProblem says in which part of a URL that url.Parse refused
// for an escape a % starts no escape ("%zz"), quoting no part of it.
func badEscapeProblem(s string) string {
	rest, _, _ := strings.Cut(s, "#")
	rest, query, _ := strings.Cut(rest, "?")
	scheme, r, ok := strings.Cut(rest, "://")
	if ok {
		rest = r
	}
	authority, path, _ := strings.Cut(rest, "/")
	userinfo, host := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, host = authority[:i], authority[i+1:]
	}
	where := "the URL"
	switch {
	case badEscape(userinfo):
		where = "the user or password"
	case badEscape(host):
		where = "the host"
	case badEscape(path) && scheme == "unix":
		where = "the socket's path"
	case badEscape(path):
		return "a % in the URL's path, where only a database number goes (redis://host:port/2)"
	case badEscape(query):
		where = "the query"
	}
	return fmt.Sprintf("a %% that starts no escape in %s (write a %% there as %%25)", where)
}

// badEscape reports a % in s not followed by two hex digits.
func badEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && (i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2])) {
			return true
		}
	}
	return false
}

func isHex(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F'
}

// unixURLProblem: a unix:// URL names one Redis on this host by its
// socket's path (unix:///run/redis/redis.sock, or
// unix://user:password@/run/…), so a host, more addresses (addr=) and
// Sentinel (master_set) make no sense there.
func unixURLProblem(u *url.URL) string {
	const want = "want unix://[user:password@]/path/to/redis.sock"
	q := u.Query()
	switch {
	case u.Scheme != "unix":
		return ""
	case u.Host != "":
		return fmt.Sprintf("unix:// takes the socket's path, not a host (%q); %s", u.Host, want)
	case u.Path == "" || strings.HasSuffix(u.Path, "/"):
		return "unix:// without the socket's path; " + want
	case q.Has("addr") || q.Has("master_set"):
		return "addr and master_set are for redis:// and rediss:// (more nodes, Sentinel); unix:// names one Redis on this host"
	}
	return ""
}

// validPort reports whether p is a TCP port number, 1 to 65535.
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}
