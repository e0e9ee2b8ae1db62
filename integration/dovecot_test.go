package integration

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"imapgate/internal/envfile"
	"imapgate/upstream"
)

// Issue 10's cases against the real Dovecot 2.3 that
// integration/dovecot/setup.sh runs, configured as behind a proxy on the
// same host: login_trusted_networks and haproxy_trusted_networks name
// 127.0.0.1 only, so the test clients (other 127.0.44.x sources) are not
// trusted, and only what imapgate itself tells Dovecot can change the
// address Dovecot sees.

// dovecot describes the running Dovecot; IMAPGATE_DOVECOT names its env file.
type dovecot struct {
	plain     string // plain IMAP listener
	haproxy   string // listener with haproxy = yes
	users     []string
	pass      string
	master    string // master user: PLAIN authzid=<user>, authcid=master
	userIPMax int    // mail_max_userip_connections
	log       string
}

func needDovecot(t *testing.T) *dovecot {
	t.Helper()
	path := os.Getenv("IMAPGATE_DOVECOT")
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("IMAPGATE_DOVECOT is not set: the real-Dovecot tests must run in CI (.ci/run starts Dovecot)")
		}
		t.Skip("real Dovecot not configured: run `sudo integration/dovecot/setup.sh install && sudo integration/dovecot/setup.sh start`, then IMAPGATE_DOVECOT=/tmp/imapgate-dovecot/env go test -run TestRealDovecot ./integration/")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("IMAPGATE_DOVECOT: %v", err)
	}
	env := envfile.Parse(data)
	d := &dovecot{plain: env["DOVECOT_PLAIN"], haproxy: env["DOVECOT_HAPROXY"], users: strings.Fields(env["DOVECOT_USERS"]),
		pass: env["DOVECOT_PASS"], master: env["DOVECOT_MASTER"], log: env["DOVECOT_LOG"]}
	d.userIPMax, err = strconv.Atoi(env["DOVECOT_USERIP_MAX"])
	if err != nil || len(d.users) < 3 || d.master == "" || d.haproxy == "" {
		t.Fatalf("%s is incomplete (rerun integration/dovecot/setup.sh start): %q", path, data)
	}
	conn, err := net.DialTimeout("tcp", d.plain, 2*time.Second)
	if err != nil {
		t.Fatalf("Dovecot is configured but not reachable at %s: %v", d.plain, err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	bufio.NewReader(conn).ReadString('\n') // its greeting, so it logs no abort
	conn.Close()
	return d
}

// dovecotGate starts imapgate in front of one of Dovecot's listeners,
// with a PROXY header of version header (0: none).
func dovecotGate(t *testing.T, addr string, header int) *gate {
	return startGate(t, gateOptions{upstream: &upstream.TCP{Address: addr, ConnectTimeout: 2 * time.Second, ProxyHeader: header}})
}

// dovecotLog reads what Dovecot logged after a point. The tests that use
// it do not run in parallel, so those lines are theirs.
type dovecotLog struct {
	path string
	from int64
}

func (d *dovecot) logFromNow(t *testing.T) *dovecotLog {
	t.Helper()
	fi, err := os.Stat(d.log)
	if err != nil {
		t.Fatalf("Dovecot's log: %v", err)
	}
	return &dovecotLog{path: d.log, from: fi.Size()}
}

func (l *dovecotLog) lines(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(l.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.NewSectionReader(f, l.from, 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range strings.Split(string(data), "\n") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// wait polls the log (10 s at most) for the first line containing all of
// subs and returns it.
func (l *dovecotLog) wait(t *testing.T, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, s := range l.lines(t) {
			if containsAll(s, subs) {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot logged no line with %q; since the test began:\n%s", subs, strings.Join(l.lines(t), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// imapConn speaks IMAP line by line, for exchanges imapclient hides: a raw
// ID, AUTHENTICATE LOGIN without SASL-IR, the EOF after LOGOUT.
type imapConn struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dialIMAP(t *testing.T, src, addr string) *imapConn {
	t.Helper()
	conn, err := dialFrom(src, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := &imapConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.line(); !strings.HasPrefix(g, "* OK ") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func (c *imapConn) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

func (c *imapConn) readLine() (string, error) {
	l, err := c.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

func (c *imapConn) line() string {
	c.t.Helper()
	l, err := c.readLine()
	if err != nil {
		c.t.Fatalf("read: %v (partial %q)", err, l)
	}
	return l
}

// cmd sends "tag command" and returns the tagged response.
func (c *imapConn) cmd(tag, command string) string {
	c.t.Helper()
	c.send(tag + " " + command)
	for {
		if l := c.line(); strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// gateLine waits for imapgate's first log line containing all of subs.
func gateLine(t *testing.T, g *gate, subs ...string) string {
	t.Helper()
	var found string
	waitFor(t, fmt.Sprintf("imapgate log line with %q (have %q)", subs, g.log.Lines()), func() bool {
		for _, l := range g.log.Lines() {
			if containsAll(l, subs) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// Issue 10, case 1: a client's ID cannot set the address Dovecot sees.
// Dovecot believes x-originating-ip and x-session-id from its trusted
// proxy, so imapgate must drop the client's x-* fields and send its own.
func TestRealDovecotClientIDCannotSpoofAddress(t *testing.T) {
	d := needDovecot(t)
	g := dovecotGate(t, d.plain, 0)
	const src = "127.0.44.1"
	dl := d.logFromNow(t)

	c := dialIMAP(t, src, g.addr)
	if r := c.cmd("i", `ID ("name" "x" "x-originating-ip" "203.0.113.9" "x-originating-port" "1" "x-session-id" "s1")`); !strings.HasPrefix(r, "i OK") {
		t.Fatalf("ID: %q", r)
	}
	if r := c.cmd("a", "LOGIN "+d.users[0]+" wrong"); !strings.HasPrefix(r, "a NO") {
		t.Fatalf("wrong password: %q", r)
	}
	c.cmd("b", "LOGOUT")

	// imap-login logs the failed session when it ends; the auth process
	// names the address it was told for the password check.
	end := dl.wait(t, "imap-login: ", "auth failed", "user=<"+d.users[0]+">")
	for _, l := range dl.lines(t) {
		if strings.Contains(l, "203.0.113.9") || strings.Contains(l, "<s1>") {
			t.Errorf("Dovecot believed the client's ID: %s", l)
		}
	}
	if !strings.Contains(end, "rip="+src+",") {
		t.Errorf("Dovecot's line for the session has not rip=%s: %s", src, end)
	}
	if !containsAll(strings.Join(dl.lines(t), "\n"), []string{"passwd-file(" + d.users[0] + "," + src + ",", "Password mismatch"}) {
		t.Errorf("Dovecot's auth process was not told the password check came from %s", src)
	}
}

// Issue 10, case 2: with disable_plaintext_auth = yes (the default),
// Dovecot takes LOGIN on its haproxy listener only from a secured
// connection, which a PROXY v2 header marks with PP2_TYPE_SSL; on the
// plain listener imapgate (trusted) is secured, and the client's address
// reaches Dovecot through imapgate's ID.
func TestRealDovecotLoginThroughProxyV2AndTrustedPlain(t *testing.T) {
	d := needDovecot(t)
	const src = "127.0.44.2"
	for _, tc := range []struct {
		name     string
		addr     string
		header   int
		listener string
	}{
		{"haproxy-v2", d.haproxy, 2, "haproxy listener, PROXY v2"},
		{"plain-trusted", d.plain, 0, "plain listener, imapgate trusted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := dovecotGate(t, tc.addr, tc.header)
			dl := d.logFromNow(t)
			cl, err := login(src, g.addr, d.users[0], d.pass)
			if err != nil {
				t.Fatalf("%s: right password refused: %v", tc.listener, err)
			}
			cl.Logout().Wait()
			cl.Close()
			gateLine(t, g, "LOGIN, user="+d.users[0]+", ip=[::ffff:"+src+"]")
			l := dl.wait(t, "imap-login: ", "Login: user=<"+d.users[0]+">")
			if !strings.Contains(l, "rip="+src+",") || !strings.Contains(l, ", secured,") {
				t.Errorf("Dovecot's login line wants rip=%s and secured: %s", src, l)
			}
		})
	}
}

// Issue 10, case 3: Dovecot's mail_max_userip_connections. Dovecot 2.3
// answers the login over the limit with a tagged
// "NO [LIMIT] Maximum number of connections from user+IP exceeded
// (mail_max_userip_connections=N)" and closes the connection. That is not
// an authentication failure: imapgate must not write the LOGIN FAILED line
// fail2ban's courier-auth filter bans on, nor count it toward its own ban,
// and the client must be told Dovecot's reason.
func TestRealDovecotUserIPLimitIsNotAuthFailure(t *testing.T) {
	d := needDovecot(t)
	g := dovecotGate(t, d.plain, 0)
	const src, repeats = "127.0.44.3", 12
	user := d.users[2] // no other test uses it: its sessions are all ours
	for i := 0; i < d.userIPMax; i++ {
		cl, err := login(src, g.addr, user, d.pass)
		if err != nil {
			t.Fatalf("session %d of %d: %v", i+1, d.userIPMax, err)
		}
		t.Cleanup(func() { cl.Close() })
	}
	for i := 1; i <= repeats; i++ {
		c := dialIMAP(t, src, g.addr)
		c.conn.SetDeadline(time.Now().Add(5 * time.Second)) // no failure delay applies
		r := c.cmd("a", "LOGIN "+user+" "+d.pass)
		c.conn.Close()
		if !strings.HasPrefix(r, "a NO [LIMIT] ") || !strings.Contains(r, "Maximum number of connections from user+IP exceeded") {
			t.Fatalf("attempt %d over mail_max_userip_connections=%d: client got %q, want Dovecot's NO [LIMIT] with its reason", i, d.userIPMax, r)
		}
		for _, l := range g.log.Lines() {
			if strings.Contains(l, "LOGIN FAILED") {
				t.Fatalf("attempt %d: imapgate logged a failed login for Dovecot's [LIMIT] (fail2ban bans on it): %s", i, l)
			}
		}
		if bans := g.limiter.Bans(time.Now()); len(bans) > 0 {
			t.Fatalf("attempt %d: [LIMIT] answers led to bans %v", i, bans)
		}
	}
	// The refused sessions have all ended (and logged) when only the held
	// ones count.
	waitFor(t, "refused sessions to end", func() bool {
		total, _ := g.limiter.PerIP(netip.MustParseAddr(src))
		return total == d.userIPMax
	})
	logins := 0
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "LOGIN FAILED") {
			t.Errorf("imapgate logged a failed login: %s", l)
		}
		if strings.Contains(l, "LOGIN, user="+user+", ip=[::ffff:"+src+"]") {
			logins++
		}
	}
	if logins != d.userIPMax {
		t.Errorf("%d LOGIN lines for %s, want %d (the held sessions only)", logins, user, d.userIPMax)
	}
	if bans := g.limiter.Bans(time.Now()); len(bans) > 0 {
		t.Errorf("bans after %d [LIMIT] answers: %v", repeats, bans)
	}
}

// Issue 10, case 4: the user name of AUTHENTICATE LOGIN (Outlook and Apple
// Mail send it as the first continuation answer; go-sasl's LOGIN client
// as SASL-IR) and, for AUTHENTICATE PLAIN with an authzid, the authcid:
// the identity whose password was checked (here Dovecot's master user
// logs in as another user).
func TestRealDovecotAuthenticateLoginAndPlainAuthzidUser(t *testing.T) {
	d := needDovecot(t)
	g := dovecotGate(t, d.plain, 0)
	user := d.users[0]
	t.Run("login-continuations", func(t *testing.T) {
		const src = "127.0.44.4"
		c := dialIMAP(t, src, g.addr)
		c.send("a AUTHENTICATE LOGIN")
		if l := c.line(); l != "+ "+b64("Username:") {
			t.Fatalf("first challenge %q", l)
		}
		c.send(b64(user))
		if l := c.line(); l != "+ "+b64("Password:") {
			t.Fatalf("second challenge %q", l)
		}
		c.send(b64(d.pass))
		var r string
		for r = c.line(); !strings.HasPrefix(r, "a "); r = c.line() {
		}
		if !strings.HasPrefix(r, "a OK") {
			t.Fatalf("AUTHENTICATE LOGIN: %q", r)
		}
		c.cmd("b", "LOGOUT")
		wantLogin(t, g, src, user)
	})
	// Through go-imap's client: go-sasl's LOGIN sends the user name as
	// SASL-IR; PLAIN names the master user as authcid, testuser2 as authzid.
	for _, tc := range []struct {
		name, src string
		mech      sasl.Client
		want      string // the user imapgate logs
	}{
		{"login-sasl-ir", "127.0.44.6", sasl.NewLoginClient(user, d.pass), user},
		{"plain-authzid", "127.0.44.7", sasl.NewPlainClient(d.users[1], d.master, d.pass), d.master},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := dialFrom(tc.src, g.addr)
			if err != nil {
				t.Fatal(err)
			}
			cl := newClient(conn)
			defer cl.Close()
			if err := cl.Authenticate(tc.mech); err != nil {
				t.Fatal(err)
			}
			cl.Logout().Wait()
			wantLogin(t, g, tc.src, tc.want)
		})
	}
}

// wantLogin checks imapgate's LOGIN line for the session from src.
func wantLogin(t *testing.T, g *gate, src, user string) {
	t.Helper()
	l := gateLine(t, g, "LOGIN, user=", "ip=[::ffff:"+src+"]")
	if want := "LOGIN, user=" + user + ", ip=[::ffff:" + src + "]"; !strings.Contains(l, want) {
		t.Errorf("imapgate logged %q, want %q", l, want)
	}
}

// Issue 10, case 5: after LOGOUT Dovecot closes the connection; imapgate
// must pass the close on at once, down to TCP: the client sees TLS's
// close_notify and then the FIN within 1 s (a client waiting for the
// server to close would otherwise stall until imapgate's closing timeout),
// and imapgate logs courier's LOGOUT line for the session.
func TestRealDovecotLogoutClosesAtOnce(t *testing.T) {
	d := needDovecot(t)
	g := dovecotGate(t, d.plain, 0)
	const src = "127.0.44.5"
	c := dialIMAP(t, src, g.addr)
	if r := c.cmd("a", "LOGIN "+d.users[0]+" "+d.pass); !strings.HasPrefix(r, "a OK") {
		t.Fatalf("LOGIN: %q", r)
	}
	start := time.Now()
	c.conn.SetReadDeadline(start.Add(time.Second))
	c.send("b LOGOUT")
	var got []string
	var err error
	for {
		var l string
		if l, err = c.readLine(); err != nil {
			break
		}
		got = append(got, l)
	}
	if len(got) != 2 || !strings.HasPrefix(got[0], "* BYE") || !strings.HasPrefix(got[1], "b OK") {
		t.Errorf("LOGOUT answered %q, want * BYE and b OK", got)
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("no end of the TLS stream within 1 s of LOGOUT: %v", err)
	}
	// Below TLS: the TCP FIN, with nothing after close_notify.
	raw := c.conn.NetConn()
	raw.SetReadDeadline(start.Add(time.Second))
	n, err := raw.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		// How long it takes (bounded), before failing.
		raw.SetReadDeadline(time.Now().Add(12 * time.Second))
		_, err2 := io.Copy(io.Discard, raw)
		t.Errorf("no TCP FIN within 1 s of LOGOUT (read %d bytes, %v); it came %.1f s after LOGOUT (%v)", n, err, time.Since(start).Seconds(), err2)
	}
	c.conn.Close() // as a client does on EOF
	end := gateLine(t, g, "user="+d.users[0]+", ip=[::ffff:"+src+"]", ", headers=")
	_, msg, _ := strings.Cut(end, " ") // after the priority
	if want := "LOGOUT, user=" + d.users[0] + ", ip=[::ffff:" + src + "]"; !strings.HasPrefix(msg, want) {
		t.Errorf("session end logged as %q, want %q", end, want)
	}
}
