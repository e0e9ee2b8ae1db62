// Package config reads imapgate's TOML file into typed, validated values.
// A file is decoded and checked whole; every problem is reported with the
// file, the line and the key (a syntax error with the line and column, and
// the key only when it is on the key's line), and a caller that is
// reloading keeps its old configuration when Load fails.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Duration is a time.Duration written as a string ("30m", "10s"). A bare
// number is refused: it would silently mean nanoseconds.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration (write e.g. \"30s\", \"10m\"): %q", b)
	}
	if v < 0 {
		return fmt.Errorf("duration must not be negative: %q", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Prefix is a CIDR ("192.0.2.0/24") or a single address ("192.0.2.7").
type Prefix struct{ netip.Prefix }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Prefix) UnmarshalText(b []byte) error {
	s := string(b)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("not an address or CIDR: %q", s)
		}
		p.Prefix = netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	q, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("not a CIDR: %q", s)
	}
	p.Prefix = q.Masked()
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (p Prefix) MarshalText() ([]byte, error) { return []byte(p.Prefix.String()), nil }

// Rate is "N/duration", e.g. "60/1m": a burst of N new connections,
// refilled at N per duration. "0" or "" is unlimited.
type Rate struct {
	Burst int
	Per   time.Duration
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Rate) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" || s == "0" {
		*r = Rate{}
		return nil
	}
	n, per, ok := strings.Cut(s, "/")
	burst, err := strconv.Atoi(n)
	if !ok || err != nil || burst < 0 {
		return fmt.Errorf("rate must look like \"60/1m\", got %q", s)
	}
	d, err := time.ParseDuration(per)
	if err != nil || d <= 0 {
		return fmt.Errorf("rate must look like \"60/1m\", got %q", s)
	}
	*r = Rate{Burst: burst, Per: d}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (r Rate) MarshalText() ([]byte, error) {
	if r.Burst == 0 {
		return []byte("0"), nil
	}
	return []byte(fmt.Sprintf("%d/%s", r.Burst, r.Per)), nil
}

// Config is the whole file.
type Config struct {
	Listen   Listen   `toml:"listen"`
	TLS      TLS      `toml:"tls"`
	Upstream Upstream `toml:"upstream"`
	Login    Login    `toml:"login"`
	Timeouts Timeouts `toml:"timeouts"`
	Table    Table    `toml:"table"`
	Limits   Limits   `toml:"limits"`
	Kernel   Kernel   `toml:"kernel"`
	Log      Log      `toml:"log"`
	Admin    Admin    `toml:"admin"`
	Cluster  Cluster  `toml:"cluster"`

	defined map[string]bool   // keys the file set
	origin  map[string]string // keys taken from courier's files, and where from
}

// Origin says where key's value came from: "file", a courier file and line,
// or "default".
func (c *Config) Origin(key string) string {
	if c.IsSet(key) {
		return "file"
	}
	if o, ok := c.origin[key]; ok {
		return o
	}
	for k, o := range c.origin { // a table taken whole, e.g. limits.override
		if strings.HasPrefix(key, k+".") {
			return o
		}
	}
	return "default"
}

// setOrigin records where key's value came from when not from the file.
func (c *Config) setOrigin(key, from string) {
	if c.origin == nil {
		c.origin = make(map[string]string)
	}
	c.origin[key] = from
}

// IsSet reports whether the file set key (dotted, e.g. "listen.address").
func (c *Config) IsSet(key string) bool { return c.defined[key] }

// Listen is the client side.
type Listen struct {
	Address string `toml:"address"`
	// ProxyProtocolFrom lists load balancers whose PROXY header (v1 or v2)
	// is honoured; everyone else is served directly, as they are.
	ProxyProtocolFrom  []Prefix `toml:"proxy_protocol_from"`
	ProxyHeaderTimeout Duration `toml:"proxy_header_timeout"`
}

// CertPair is one certificate; an empty key means the key is in the cert
// file (courier's TLS_CERTFILE).
type CertPair struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// TLS is the client-side TLS.
type TLS struct {
	Cert       string     `toml:"cert"`
	Key        string     `toml:"key"`
	SNI        []CertPair `toml:"sni"`
	CourierSNI bool       `toml:"courier_sni"`
	MinVersion string     `toml:"min_version"`
	// PostQuantum offers the hybrid X25519MLKEM768 key exchange.
	PostQuantum bool `toml:"post_quantum"`
}

// Upstream is the IMAP server.
type Upstream struct {
	// Mode is "tcp" (connect to Address) or "exec" (start courier's
	// imaplogin per session; see upstream.Exec).
	Mode            string   `toml:"mode"`
	Exec            []string `toml:"exec"`
	CourierConfig   string   `toml:"courier_config"`
	Address         string   `toml:"address"`
	TLS             bool     `toml:"tls"`
	TLSVerify       bool     `toml:"tls_verify"`
	TLSServerName   string   `toml:"tls_server_name"`
	TLSCAFile       string   `toml:"tls_ca_file"`
	ConnectTimeout  Duration `toml:"connect_timeout"`
	GreetingTimeout Duration `toml:"greeting_timeout"`
	ProxyProtocol   string   `toml:"proxy_protocol"`
	// SendID sends imapgate's own ID (RFC 2971) with the client's address
	// before LOGIN, when the upstream advertises ID (Dovecot does; courier
	// ignores ID before login and does not advertise it there).
	SendID bool `toml:"send_id"`
}

// Login bounds the login phase.
type Login struct {
	MaxLine     int `toml:"max_line"`
	MaxLiteral  int `toml:"max_literal"`
	MaxCommands int `toml:"max_commands"`
}

// Timeouts per connection state.
type Timeouts struct {
	Handshake Duration `toml:"handshake"`
	// Silent replaces Handshake for a connection that has sent no byte
	// (conntable.Config.Silent).
	Silent      Duration `toml:"silent"`
	Preauth     Duration `toml:"preauth"`
	Established Duration `toml:"established"`
	Closing     Duration `toml:"closing"`
}

// Table sizes the connection table.
type Table struct {
	Max     int `toml:"max"`
	Buckets int `toml:"buckets"`
}

// Limits is [limits].
type Limits struct {
	MaxConnections  int      `toml:"max_connections"`
	MaxPerIP        int      `toml:"max_per_ip"`
	MaxPreauthPerIP int      `toml:"max_preauth_per_ip"`
	MaxPerPrefix    int      `toml:"max_per_prefix"`
	MaxPerUserIP    int      `toml:"max_per_user_ip"`
	IPv4Prefix      int      `toml:"ipv4_prefix"`
	IPv6Prefix      int      `toml:"ipv6_prefix"`
	RatePerIP       Rate     `toml:"rate_per_ip"`
	RatePerPrefix   Rate     `toml:"rate_per_prefix"`
	RateEntries     int      `toml:"rate_entries"`
	Allow           []Prefix `toml:"allow"`
	Deny            []Prefix `toml:"deny"`
	Exempt          []Prefix `toml:"exempt"`
	// Action maps a limit name to "close", "bye" or "wait".
	Action map[string]string `toml:"action"`
	// DryRun lists limits that only log and count.
	DryRun       []string     `toml:"dry_run"`
	AuthFailures AuthFailures `toml:"auth_failures"`
	KnownGood    KnownGood    `toml:"known_good"`
	Override     []Override   `toml:"override"`
	// OpenFilesCheck refuses to start when the open-file limit cannot hold
	// the table; false only warns.
	OpenFilesCheck bool `toml:"open_files_check"`
}

// AuthFailures is the auth-failure penalty (limiter.Penalty).
type AuthFailures struct {
	Failures       int      `toml:"failures"`
	MinUsers       int      `toml:"min_users"`
	UserFailures   int      `toml:"user_failures"`
	SprayFailures  int      `toml:"spray_failures"`
	PrefixFailures int      `toml:"prefix_failures"`
	Window         Duration `toml:"window"`
	BanTime        Duration `toml:"ban_time"`
	Delay          Duration `toml:"delay"`
	MaxDelay       Duration `toml:"max_delay"`
}

// KnownGood is [limits.known_good], the tier for addresses shared by
// honest users (limiter.KnownGood).
type KnownGood struct {
	MinUsers        int      `toml:"min_users"`
	Window          Duration `toml:"window"`
	MaxPerIP        int      `toml:"max_per_ip"`
	MaxPreauthPerIP int      `toml:"max_preauth_per_ip"`
	MaxPerPrefix    int      `toml:"max_per_prefix"`
	RatePerIP       Rate     `toml:"rate_per_ip"`
	RatePerPrefix   Rate     `toml:"rate_per_prefix"`
}

// Override is one [[limits.override]]: limits for a CIDR. Unset fields
// keep the global value.
type Override struct {
	CIDR            Prefix `toml:"cidr"`
	MaxConnections  *int   `toml:"max_connections"`
	MaxPerIP        *int   `toml:"max_per_ip"`
	MaxPreauthPerIP *int   `toml:"max_preauth_per_ip"`
	MaxPerPrefix    *int   `toml:"max_per_prefix"`
	MaxPerUserIP    *int   `toml:"max_per_user_ip"`
	RatePerIP       *Rate  `toml:"rate_per_ip"`
	RatePerPrefix   *Rate  `toml:"rate_per_prefix"`
}

// Log is [log].
type Log struct {
	// Output: "stderr", "syslog" (/dev/log), "syslog:/socket" or "file:/path".
	Output        string `toml:"output"`
	Tag           string `toml:"tag"`
	Hostname      string `toml:"hostname"`
	LoginStartTLS bool   `toml:"login_starttls"`
}

// Admin is the metrics and admin endpoint.
type Admin struct {
	// Address: host:port, "unix:/path" for a unix socket, or "" for none.
	Address     string `toml:"address"`
	AllowPublic bool   `toml:"allow_public"`
	// Token lets other hosts change state with "Authorization: Bearer".
	// Never printed: -check shows "(set)".
	Token string `toml:"token" secret:"true"`
}

// Cluster is [cluster]: replicas sharing limits, bans and TLS session
// ticket keys through Redis (package cluster). An empty Redis turns it
// off.
type Cluster struct {
	// Redis is the URL; its password is never printed (-check: "(set)").
	Redis          string   `toml:"redis" secret:"true"`
	Node           string   `toml:"node"`
	KeyPrefix      string   `toml:"key_prefix"`
	Timeout        Duration `toml:"timeout"`
	NodeTTL        Duration `toml:"node_ttl"`
	OverLimitHold  Duration `toml:"over_limit_hold"`
	TLSCAFile      string   `toml:"tls_ca_file"`
	TicketKeys     bool     `toml:"ticket_keys"`
	TicketRotation Duration `toml:"ticket_rotation"`
}

// Kernel is [kernel]: drops in the Linux kernel (package kernel) and the
// watch on the host's conntrack table.
type Kernel struct {
	// NFTables makes imapgate own the nftables table "inet <Table>" and
	// drop banned and escalated addresses' new connections there, before
	// conntrack. Needs CAP_NET_ADMIN; without it imapgate says so once and
	// goes on with the userspace limits. A reload turns it on or off.
	NFTables bool `toml:"nftables"`
	// Table names imapgate's nftables table (family inet): two instances
	// on one host need two names. A letter, then up to 31 letters, digits
	// and underscores. A reload to another name removes the old table.
	Table string `toml:"table"`
	// DryRun logs what would enter the sets and adds nothing.
	DryRun     bool             `toml:"dry_run"`
	Escalation KernelEscalation `toml:"escalation"`
	// ConntrackWatch reads the host's conntrack fill every this often and
	// warns at 80 % and 95 %; "0s" turns the watch off. A reload starts,
	// re-times or stops the watch.
	ConntrackWatch Duration `toml:"conntrack_watch"`
}

// KernelEscalation is [kernel.escalation] (kernel.Escalation).
type KernelEscalation struct {
	Refusals int      `toml:"refusals"`
	Window   Duration `toml:"window"`
	First    Duration `toml:"first"`
	Max      Duration `toml:"max"`
	// PrefixAddresses: a prefix (limits.ipv4_prefix, ipv6_prefix) with
	// this many of its addresses dropped by escalation at once is dropped
	// whole; 0: only refusals by the per-prefix limits escalate a prefix.
	PrefixAddresses int `toml:"prefix_addresses"`
}

// Error is a problem in a config file at a line and key: "file:line: key:
// msg", or "file:line:col: msg" for a syntax error (which names a key only
// when it is on the key's own line).
type Error struct {
	File string
	Line int    // 0 if unknown
	Col  int    // in bytes from 1; 0 if unknown (all but syntax errors)
	Key  string // "" if none is at fault
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

// Errors is every problem found in one file.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Validate checks c again (after ApplyCourier changed it); name names the
// configuration in errors.
func (c *Config) Validate(name string) error {
	var errs Errors
	for _, p := range c.validate() {
		key := p.key
		if o, ok := c.origin[key]; ok {
			key += " (from " + o + ")"
		}
		errs = append(errs, &Error{File: name, Key: key, Msg: p.msg})
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// syntaxError is pe at the line and column of its offending byte. The
// parser's Position.Line counts a newline it has already consumed, so an
// error about a line's end ("[limits" with no "]") would name the next line;
// Position.Start, the byte offset, does not. pe.LastKey is the last key or
// table the parser entered, often a table above the mistake ("log" for an
// unclosed "[limits" after [log]), so it is named only when the mistake is
// on a line of its own (a value, a duplicate key).
func syntaxError(name, text string, pe toml.ParseError) *Error {
	e := &Error{File: name, Line: pe.Position.Line, Col: pe.Position.Col, Msg: pe.Message}
	if s := pe.Position.Start; s >= 0 && s <= len(text) && (s > 0 || pe.Position.Line <= 1) {
		lineStart := strings.LastIndexByte(text[:s], '\n') + 1
		e.Line, e.Col = 1+strings.Count(text[:s], "\n"), 1+s-lineStart
	}
	if slices.Contains(newLocator(text).lines[pe.LastKey], e.Line) {
		e.Key = pe.LastKey
	}
	return e
}

// Load reads and validates path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, string(data))
}

// Parse decodes and validates text (named name in errors) over the
// defaults.
func Parse(name, text string) (*Config, error) {
	c := Default()
	md, err := toml.Decode(text, c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{syntaxError(name, text, pe)}
		}
		// Type errors come as text: toml: line N (last key "K"): message.
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, Errors{{File: name, Line: line, Key: m[2], Msg: m[3]}}
		}
		return nil, Errors{{File: name, Msg: err.Error()}}
	}
	c.defined = make(map[string]bool)
	for _, k := range md.Keys() {
		c.defined[k.String()] = true
	}
	// Lowering max_per_ip alone lowers the stricter pre-login limit with it;
	// only a file that sets both inconsistently is refused.
	if l := &c.Limits; !c.IsSet("limits.max_preauth_per_ip") && l.MaxPerIP > 0 && l.MaxPreauthPerIP > l.MaxPerIP {
		l.MaxPreauthPerIP = l.MaxPerIP
		c.setOrigin("limits.max_preauth_per_ip", "default, lowered to max_per_ip")
	}
	loc := newLocator(text)
	errs := checkMapTables(md, name, loc)
	for _, k := range md.Undecoded() {
		if slices.ContainsFunc(errs, func(e *Error) bool { return strings.HasPrefix(k.String(), e.Key+".") }) {
			continue // in a table refused whole
		}
		msg := "unknown key"
		if s := suggestKey(k.String()); s != "" {
			msg += " (did you mean " + s + "?)"
		}
		errs = append(errs, &Error{File: name, Line: loc.line(k.String(), 0), Key: k.String(), Msg: msg})
	}
	for _, p := range c.validate() {
		errs = append(errs, &Error{File: name, Line: loc.line(p.key, p.index), Key: p.key, Msg: p.msg})
	}
	if len(errs) > 0 {
		// In the file's order, as an admin fixes them (a problem with no
		// line of its own, a default's, last).
		slices.SortStableFunc(errs, func(a, b *Error) int {
			return cmp.Compare(lineOrLast(a.Line), lineOrLast(b.Line))
		})
		return nil, errs
	}
	return c, nil
}

func lineOrLast(line int) int {
	if line <= 0 {
		return math.MaxInt
	}
	return line
}
