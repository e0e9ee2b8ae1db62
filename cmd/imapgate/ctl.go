package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"imapgate/admin"
	"imapgate/cluster"
	"imapgate/config"
	"imapgate/courierlog"
)

const ctlUsage = `usage: imapgate ctl [-admin ADDR | -config FILE] [-json] [-token T] COMMAND
  status                    table fill, states, counters, bans, known-good count
  top [N]                   top addresses and networks: live connections, refusals, failed logins
  conns [addr=A] [prefix=P] [user=U] [state=S]
                            live connections (like conntrack -L)
  kill ID|ADDR              close one connection, or all of an address (like conntrack -D)
  bans                      bans and kernel drops: address or network, user (for a user+address ban),
                            until, why, whether in nftables
  ban ADDR|CIDR [DURATION [USER]]
                            ban an address or network (with USER: that user on ADDR) for DURATION
                            (default the auth-failure ban_time); with [cluster], on every node
  unban ADDR|CIDR [USER]    lift a ban from failed logins, and its kernel drop (with USER: that user's ban on ADDR only);
                            with [cluster], on every node
  knowngood ADDR            whether ADDR and its network get the known-good tier's limits, until when,
                            or how many users have logged in from it towards it
  reload                    re-read the configuration and certificates
  reopen-logs               reopen the log file after rotation, or reconnect to syslog (like SIGUSR1)
`

// ctlCommands lists the commands in ctlUsage: the first word of each line
// indented by two spaces.
func ctlCommands() []string {
	var cmds []string
	for _, l := range strings.Split(ctlUsage, "\n") {
		if rest, ok := strings.CutPrefix(l, "  "); ok && rest != "" && rest[0] != ' ' {
			cmds = append(cmds, strings.Fields(rest)[0])
		}
	}
	return cmds
}

// defaultConfigFile is the configuration the unit file and the manual page
// name; ctl reads admin.address from it when given neither -admin nor
// -config. A variable for the tests.
var defaultConfigFile = "/etc/imapgate/imapgate.toml"

// ctlFlagSet defines ctl's flags; the manual page lists the same.
func ctlFlagSet() (fs *flag.FlagSet, addr, cfgFile *string, asJSON *bool, token *string) {
	fs = flag.NewFlagSet("imapgate ctl", flag.ContinueOnError)
	addr = fs.String("admin", "", "admin endpoint: host:port or unix:/path (default: admin.address in the -config file, or "+
		config.Default().Admin.Address+" if the default file does not exist)")
	cfgFile = fs.String("config", defaultConfigFile, "read the admin endpoint's address (admin.address) from this configuration `file`")
	asJSON = fs.Bool("json", false, "print the endpoint's JSON, for scripts; a failure too, as {\"error\": ...} (exit status 1)")
	token = fs.String("token", "", "admin token, for a remote endpoint")
	return fs, addr, cfgFile, asJSON, token
}

// ctl talks to a running imapgate's admin endpoint.
func ctl(args []string, stdout, stderr io.Writer) int {
	fs, addr, cfgFile, asJSON, token := ctlFlagSet()
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // asked for: Parse printed the usage
		}
		return 2 // Parse printed the mistake and the usage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if !slices.Contains(ctlCommands(), cmd) {
		msg := fmt.Sprintf("imapgate ctl: unknown command %q", cmd)
		if s := config.Nearest(cmd, ctlCommands()); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		fmt.Fprintln(stderr, msg)
		fs.Usage()
		return 2
	}
	if err := checkCtlArgs(cmd, rest); err != nil {
		fmt.Fprintf(stderr, "imapgate ctl: %s: %v\n", cmd, err)
		fs.Usage()
		return 2
	}
	configGiven := false
	fs.Visit(func(f *flag.Flag) { configGiven = configGiven || f.Name == "config" })
	ep, err := findAdmin(*addr, *cfgFile, configGiven)
	if err == nil {
		err = newCtlClient(ep, *token).run(stdout, cmd, rest, *asJSON)
	}
	if err != nil {
		if *asJSON {
			writeJSONError(stdout, err)
		}
		fmt.Fprintln(stderr, "imapgate ctl:", err)
		return 1
	}
	return 0
}

// checkCtlArgs checks a command's arguments before anything is read or
// sent: a mistake is the caller's to show with the usage.
func checkCtlArgs(cmd string, rest []string) error {
	switch cmd {
	case "status", "bans", "reload", "reopen-logs":
		if len(rest) != 0 {
			return fmt.Errorf("takes no arguments")
		}
	case "top":
		if len(rest) > 1 {
			return fmt.Errorf("takes at most a count")
		}
		if len(rest) == 1 {
			if n, err := strconv.Atoi(rest[0]); err != nil || n < 1 {
				return fmt.Errorf("%q is not a count (top 20)", rest[0])
			}
		}
	case "kill":
		if len(rest) != 1 {
			return fmt.Errorf("takes one connection id or address (see ctl conns)")
		}
		if _, err := strconv.ParseUint(rest[0], 10, 64); err != nil {
			if _, err := netip.ParseAddr(rest[0]); err != nil {
				return fmt.Errorf("%q is neither a connection id nor an address", rest[0])
			}
		}
	case "unban":
		if len(rest) != 1 && len(rest) != 2 {
			return fmt.Errorf("takes an address or CIDR, and optionally a user")
		}
	case "ban":
		if len(rest) < 1 || len(rest) > 3 {
			return fmt.Errorf("takes an address or CIDR, optionally a duration (10m) and a user")
		}
		if len(rest) >= 2 {
			if d, err := time.ParseDuration(rest[1]); err != nil || d <= 0 {
				return fmt.Errorf("%q is not a duration (10m, 2h)", rest[1])
			}
		}
	case "knowngood":
		if len(rest) != 1 {
			return fmt.Errorf("takes one address (its network is shown with it)")
		}
		if _, err := netip.ParseAddr(rest[0]); err != nil {
			return fmt.Errorf("%q is not an address (its network is shown with it)", rest[0])
		}
	}
	return nil
}

// adminEndpoint is the admin endpoint's address and where ctl took it
// from, for an error that cannot reach it.
type adminEndpoint struct {
	addr string // host:port or unix:/path
	from string // "-admin", "admin.address in FILE", …
}

// findAdmin returns -admin when given (admin != ""); else admin.address in
// file; else, when file is the default (not configGiven) and does not
// exist, the built-in default address. An unreadable or invalid file, or
// an empty admin.address (the endpoint is off), is an error.
func findAdmin(admin, file string, configGiven bool) (adminEndpoint, error) {
	if admin != "" {
		if strings.Contains(admin, "://") {
			// http://host:port would become http://http//host:port.
			return adminEndpoint{}, fmt.Errorf("-admin %q: give host:port or unix:/path, not a URL", admin)
		}
		return adminEndpoint{admin, "-admin"}, nil
	}
	cfg, err := config.Load(file)
	if errors.Is(err, os.ErrNotExist) && !configGiven {
		return adminEndpoint{config.Default().Admin.Address, "the default address: " + file + " does not exist"}, nil
	}
	if err != nil {
		return adminEndpoint{}, fmt.Errorf("reading the admin address: %w (-admin ADDR skips the file)", err)
	}
	if cfg.Admin.Address == "" {
		return adminEndpoint{}, fmt.Errorf("%s: admin.address is empty: the admin endpoint is off", file)
	}
	return adminEndpoint{cfg.Admin.Address, "admin.address in " + file}, nil
}

// run carries out one command (one of ctlCommands) and prints its answer,
// or with raw the endpoint's JSON.
func (c *ctlClient) run(w io.Writer, cmd string, rest []string, raw bool) error {
	switch cmd {
	case "status":
		return c.status(w, raw)
	case "top":
		n := "10"
		if len(rest) > 0 {
			n = rest[0]
		}
		return c.top(w, n, raw)
	case "conns":
		return c.conns(w, rest, raw)
	case "kill":
		return c.post(w, "/kill", killQuery(rest), raw)
	case "bans":
		return c.bans(w, raw)
	case "unban":
		q := url.Values{"addr": {rest[0]}}
		if len(rest) == 2 {
			q.Set("user", rest[1])
		}
		return c.post(w, "/unban", q, raw)
	case "ban":
		q := url.Values{"addr": {rest[0]}}
		if len(rest) >= 2 {
			q.Set("for", rest[1])
		}
		if len(rest) == 3 {
			q.Set("user", rest[2])
		}
		return c.post(w, "/ban", q, raw)
	case "knowngood":
		return c.knownGood(w, rest[0], raw)
	case "reload":
		return c.post(w, "/reload", nil, raw)
	case "reopen-logs":
		return c.post(w, "/reopen-logs", nil, raw)
	}
	return fmt.Errorf("%s is in the usage but not implemented", cmd)
}

// writeJSONError prints err for scripts that read ctl -json's stdout, in
// the admin endpoint's own shape ({"error": …}).
func writeJSONError(w io.Writer, err error) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{err.Error()})
	fmt.Fprintf(w, "%s\n", b)
}

// killQuery takes a table ID (a number) or an address.
func killQuery(rest []string) url.Values {
	if _, err := strconv.ParseUint(rest[0], 10, 64); err == nil {
		return url.Values{"id": {rest[0]}}
	}
	return url.Values{"addr": {rest[0]}}
}

type ctlClient struct {
	ep    adminEndpoint
	base  string
	token string
	http  *http.Client
}

func newCtlClient(ep adminEndpoint, token string) *ctlClient {
	tr := &http.Transport{}
	base := "http://" + ep.addr
	if path, ok := strings.CutPrefix(ep.addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		base = "http://imapgate"
	}
	return &ctlClient{ep: ep, base: base, token: token, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func (c *ctlClient) do(method, path string, q url.Values) ([]byte, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("admin address: %w (-admin takes host:port or unix:/path)", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which repeats the address or hides a socket's path
		}
		return nil, fmt.Errorf("cannot reach the admin endpoint at %s (%s): %w; is imapgate running? "+
			"Choose the endpoint with -admin host:port or unix:/path, or -config FILE", c.ep.addr, c.ep.from, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return nil, ctlError(resp.Status, body)
	}
	return body, nil
}

// ctlError is the admin endpoint's refusal as an admin reads it: the
// error it gave in its JSON ({"error": …}; a reload's several problems one
// per line), else the status and the body.
func ctlError(status string, body []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return errors.New(e.Error)
	}
	return fmt.Errorf("%s: %s", status, strings.TrimSpace(string(body)))
}

// get fetches path into v; with raw it prints the JSON instead and
// reports done.
func (c *ctlClient) get(w io.Writer, path string, q url.Values, raw bool, v any) (done bool, err error) {
	body, err := c.do("GET", path, q)
	if err != nil {
		return true, err
	}
	if raw {
		w.Write(body)
		return true, nil
	}
	return false, json.Unmarshal(body, v)
}

func (c *ctlClient) status(w io.Writer, raw bool) error {
	var s admin.Status
	if done, err := c.get(w, "/status", nil, raw, &s); done || err != nil {
		return err
	}
	pct := 0.0
	if s.Max > 0 {
		pct = 100 * float64(s.Count) / float64(s.Max)
	}
	fmt.Fprintf(w, "connections  %d of %d (%.1f%%), %d buckets, up %s\n", s.Count, s.Max, pct, s.Buckets, s.Uptime)
	fmt.Fprintf(w, "states       handshake %d  preauth %d  established %d  closing %d\n",
		s.States["handshake"], s.States["preauth"], s.States["established"], s.States["closing"])
	st := s.Stats
	fmt.Fprintf(w, "table        insert %d  insert_failed %d  early_drop %d  timeouts %d  reaped %d\n",
		st.Insert, st.InsertFailed, st.EarlyDrop, st.Timeout, st.Reaped)
	fmt.Fprintf(w, "relayed      %s from clients, %s to clients\n", bytesString(st.RxBytes), bytesString(st.TxBytes))
	fmt.Fprintf(w, "bans         %d\n", s.Bans)
	fmt.Fprintf(w, "known-good   %s, %s\n", plural(s.KnownGood.Addresses, "address", "addresses"), plural(s.KnownGood.Networks, "network", "networks"))
	for _, p := range s.UpstreamProblems {
		fmt.Fprintf(w, "UPSTREAM     %s\n", p)
	}
	if len(s.WouldRefuse) > 0 {
		fmt.Fprintf(w, "dry run      %s\n", mapString(s.WouldRefuse))
	}
	if s.Kernel != "" {
		fmt.Fprintf(w, "kernel       %s\n", s.Kernel)
	}
	if c := s.Cluster; c != nil {
		printCluster(w, c)
	}
	if s.Info != nil {
		fmt.Fprintf(w, "listening    %v, upstream %v (%v), config %v\n", s.Info["listen"], s.Info["upstream"], s.Info["upstream_mode"], s.Info["config"])
	}
	return nil
}

// plural is n with the word for one or for several.
func plural(n int, one, several string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, several)
}

func mapString(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func bytesString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func (c *ctlClient) top(w io.Writer, n string, raw bool) error {
	var t admin.TopReport
	if done, err := c.get(w, "/top", url.Values{"n": {n}}, raw, &t); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, sec := range []struct {
		title string
		list  []admin.Count
	}{{"LIVE CONNECTIONS BY ADDRESS", t.Connections}, {"LIVE CONNECTIONS BY NETWORK", t.Prefixes},
		{"REFUSED (since start)", t.Refused}, {"FAILED LOGINS (since start)", t.FailedLogins}} {
		fmt.Fprintf(tw, "%s\n", sec.title)
		if len(sec.list) == 0 {
			fmt.Fprintf(tw, "  (none)\n")
		}
		for _, c := range sec.list {
			fmt.Fprintf(tw, "  %s\t%d\n", c.Addr, c.Count)
		}
	}
	return tw.Flush()
}

func (c *ctlClient) bans(w io.Writer, raw bool) error {
	var bans []admin.BanInfo
	if done, err := c.get(w, "/bans", nil, raw, &bans); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "BANNED\tUSER\tUNTIL\tREASON\tWHERE\n")
	for _, b := range bans {
		user := b.User
		if user == "" {
			user = "(all)"
		}
		key := banKeyString(b.Key)
		where := "userspace"
		switch {
		case b.Kernel:
			where = "kernel (nftables)"
		case b.DryRun:
			where = "userspace (kernel: dry run)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", key, user, b.Until.UTC().Format(time.RFC3339), b.Reason, where)
	}
	return tw.Flush()
}

// knownGood prints what the known-good tier knows of addr and its
// network: known-good until when, or the users counted towards it.
func (c *ctlClient) knownGood(w io.Writer, addr string, raw bool) error {
	var k admin.KnownGoodInfo
	if done, err := c.get(w, "/knowngood", url.Values{"addr": {addr}}, raw, &k); done || err != nil {
		return err
	}
	if k.MinUsers == 0 {
		fmt.Fprintln(w, "the known-good tier is off ([limits.known_good] min_users = 0)")
		return nil
	}
	line := func(what string, until *time.Time, users int) {
		if until != nil {
			fmt.Fprintf(w, "%-20s known-good until %s\n", what, until.UTC().Format(time.RFC3339))
			return
		}
		fmt.Fprintf(w, "%-20s not known-good: %d of %d users logged in within the window\n", what, users, k.MinUsers)
	}
	line(k.Addr, k.AddrUntil, k.AddrUsers)
	line(k.Network, k.NetworkUntil, k.NetworkUsers)
	return nil
}

func (c *ctlClient) conns(w io.Writer, filters []string, raw bool) error {
	q := url.Values{}
	for _, f := range filters {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("filter %q: want addr=, prefix=, user= or state=", f)
		}
		q.Set(k, v)
	}
	if !raw {
		q.Set("format", "text")
	}
	body, err := c.do("GET", "/conns", q)
	w.Write(body)
	return err
}

func (c *ctlClient) post(w io.Writer, path string, q url.Values, raw bool) error {
	body, err := c.do("POST", path, q)
	if err != nil {
		return err
	}
	if raw {
		w.Write(body)
		return nil
	}
	var m map[string]any
	json.Unmarshal(body, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		if k == "banned" || k == "unbanned" {
			if str, ok := v.(string); ok {
				v = banKeyString(str)
			}
		}
		fmt.Fprintf(w, "%s: %v\n", k, v)
	}
	return nil
}

// banKeyString writes a ban's key as ctl bans lists it: one address as
// the log lines write it (::ffff:192.0.2.7), a network as a CIDR.
func banKeyString(key string) string {
	if p, err := netip.ParsePrefix(key); err == nil && p.IsSingleIP() {
		return courierlog.Addr(p.Addr())
	}
	return key
}

// nodeLife says how a node's liveness stands: alive, silent (its last
// heartbeat older than three intervals: its share still counts until
// node_ttl runs out), or dead (not yet swept).
func nodeLife(n cluster.NodeStatus, ttl, beat time.Duration) string {
	if !n.Alive {
		return fmt.Sprintf("DEAD for %s", (-n.Expires).Round(time.Second))
	}
	if heard := ttl - n.Expires; ttl > 0 && beat > 0 && heard > 3*beat {
		return fmt.Sprintf("SILENT for %s (counted until dead in %s)", heard.Round(100*time.Millisecond), n.Expires.Round(100*time.Millisecond))
	}
	return fmt.Sprintf("alive (%s left)", n.Expires.Round(time.Second))
}

// printCluster writes the cluster lines of ctl status.
func printCluster(w io.Writer, c *cluster.Status) {
	state := fmt.Sprintf("shared limits, Redis %.2f ms", float64(c.RedisLatency)/1e6)
	if c.Degraded {
		state = "DEGRADED: local limits"
		if !c.DegradedSince.IsZero() {
			state += fmt.Sprintf(" for %s", time.Since(c.DegradedSince).Round(time.Second))
		}
	}
	fmt.Fprintf(w, "cluster      node %s via %s: %s; %d limiter calls, %d failed, %d refusals from memory\n",
		c.Node, c.Redis, state, c.Calls, c.Failures, c.CacheHits)
	if c.Master != "" {
		fmt.Fprintf(w, "             Sentinel's master now: %s\n", c.Master)
	}
	if c.Error != "" {
		fmt.Fprintf(w, "             Redis: %s\n", c.Error)
	}
	for _, d := range c.LimitsDiffer {
		fmt.Fprintf(w, "             limits differ: %s\n", d)
	}
	for _, n := range c.Nodes {
		fmt.Fprintf(w, "  node %-12s %s, %s\n", n.Node, nodeLife(n, c.NodeTTL, c.Heartbeat), plural(n.Sessions, "session", "sessions"))
	}
}
