package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"

	"imapgate/config"
	"imapgate/gateway"
	"imapgate/limiter"
	"imapgate/proxy"
	"imapgate/upstream"
)

const dovecotGreeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n"

// What the upstream is told about the client comes from imapgate: the
// client's x-* ID fields are dropped and imapgate's own are added, in the
// client's ID if it sends one, else in an ID of imapgate's before LOGIN
// whose answers the client never sees.
func TestIDToUpstreamComesFromImapgate(t *testing.T) {
	ids := make(chan string, 4)
	script := func(u *upstreamConn) {
		u.send(dovecotGreeting)
		for {
			l := u.read()
			if l == "" {
				return
			}
			tag, rest, _ := strings.Cut(l, " ")
			switch cmd, _, _ := strings.Cut(rest, " "); cmd {
			case "ID":
				ids <- l
				u.send("* ID (\"name\" \"Dovecot\")\r\n" + tag + " OK ID completed.\r\n")
			case "LOGIN":
				u.send(tag + " OK Logged in\r\n")
			default:
				u.send(tag + " OK done\r\n")
			}
		}
	}
	up := fakeUpstream(t, script)
	p := startProxy(t, up.upstream(), proxyConfig{})

	// The greeting lists ID: imapgate's own ID goes right after it, so even
	// a session that never logs in is logged with the client's address;
	// its answers stay between imapgate and the upstream.
	c := dial(t, p.addr)
	c.expect("* OK")
	if l := <-ids; !strings.HasPrefix(l, "imapgate-id ID (\"x-originating-ip\" \"127.0.0.1\"") {
		t.Errorf("imapgate's ID = %q", l)
	}
	c.send("i ID (\"name\" \"x\" \"x-originating-ip\" \"203.0.113.9\" \"X-Session-ID\" \"s1\" \"x-proxy-ttl\" \"9\")\r\n")
	c.expect("* ID (\"name\" \"Dovecot\")")
	c.expect("i OK")
	got := <-ids
	local := c.conn.LocalAddr().(*net.TCPAddr)
	for _, want := range []string{`"name" "x"`, `"x-originating-ip" "127.0.0.1"`,
		`"x-originating-port" "` + strconv.Itoa(local.Port) + `"`, `"x-connected-ip" "127.0.0.1"`, `"x-session-id" "`} {
		if !strings.Contains(got, want) {
			t.Errorf("upstream got %q, missing %s", got, want)
		}
	}
	for _, bad := range []string{"203.0.113.9", `"s1"`, "x-proxy-ttl", "X-Session-ID"} {
		if strings.Contains(got, bad) {
			t.Errorf("client's %s reached the upstream: %q", bad, got)
		}
	}
	c.send("a LOGIN bob secret\r\n")
	c.expect("a OK")
	select {
	case l := <-ids:
		t.Errorf("a second ID after the client's: %q", l)
	default:
	}

	// A greeting without capabilities: imapgate's ID goes before LOGIN,
	// once a CAPABILITY answer has listed ID.
	bare := fakeUpstream(t, func(u *upstreamConn) {
		u.send("* OK ready\r\n")
		for {
			l := u.read()
			if l == "" {
				return
			}
			tag, rest, _ := strings.Cut(l, " ")
			switch cmd, _, _ := strings.Cut(rest, " "); cmd {
			case "CAPABILITY":
				u.send("* CAPABILITY IMAP4rev1 ID\r\n" + tag + " OK done\r\n")
			case "ID":
				ids <- l
				u.send("* ID NIL\r\n" + tag + " OK ID completed.\r\n")
			default:
				u.send(tag + " OK done\r\n")
			}
		}
	})
	p3 := startProxy(t, bare.upstream(), proxyConfig{})
	c = dial(t, p3.addr)
	c.expect("* OK")
	c.send("c CAPABILITY\r\n")
	c.expect("* CAPABILITY")
	c.expect("c OK")
	c.send("a LOGIN bob secret\r\n")
	c.expect("a OK")
	if l := <-ids; !strings.HasPrefix(l, "imapgate-id ID (\"x-originating-ip\" \"127.0.0.1\"") {
		t.Errorf("imapgate's ID = %q", l)
	}

	// send_id off: nothing of imapgate's, and still no client x-* fields.
	p2 := startProxy(t, up.upstream(), proxyConfig{login: proxy.Login{NoUpstreamID: true}})
	c = dial(t, p2.addr)
	c.expect("* OK")
	c.send("i ID (\"name\" \"x\" \"x-originating-ip\" \"203.0.113.9\")\r\n")
	c.expect("* ID")
	c.expect("i OK")
	if l := <-ids; l != `i ID ("name" "x")` {
		t.Errorf("with send_id off the upstream got %q", l)
	}
	c.send("a LOGIN bob secret\r\n")
	c.expect("a OK")
	select {
	case l := <-ids:
		t.Errorf("with send_id off imapgate sent %q", l)
	default:
	}
}

// A PROXY v2 header for a TLS client carries PP2_TYPE_SSL (client flag,
// version, cipher) and PP2_TYPE_AUTHORITY (the SNI), as HAProxy's
// send-proxy-v2-ssl does, so Dovecot treats the client as secured.
func TestProxyV2HeaderCarriesTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	headers := make(chan *proxyproto.Header, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		h, err := proxyproto.Read(r)
		if err != nil {
			t.Error(err)
		}
		headers <- h
		c.Write([]byte("* OK ready\r\n"))
		r.ReadString('\n')
	}()
	up := &upstream.TCP{Address: ln.Addr().String(), ProxyHeader: 2}
	p := startProxy(t, up, proxyConfig{})
	c := dialSNI(t, p.addr, "mail.example.org")
	c.expect("* OK")
	h := <-headers
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatal(err)
	}
	var sslOK, authority bool
	for _, tlv := range tlvs {
		switch {
		case tlvparse.IsSSL(tlv):
			ssl, err := tlvparse.SSL(tlv)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := ssl.SSLVersion()
			cipher, _ := ssl.SSLCipher()
			sslOK = ssl.ClientSSL() && strings.HasPrefix(v, "TLSv1.") && strings.HasPrefix(cipher, "TLS_")
			if !sslOK {
				t.Errorf("SSL TLV: client=%#x version=%q cipher=%q", ssl.Client, v, cipher)
			}
		case tlv.Type == proxyproto.PP2_TYPE_AUTHORITY:
			authority = string(tlv.Value) == "mail.example.org"
		}
	}
	if !sslOK || !authority {
		t.Errorf("TLVs %+v: SSL ok %v, authority ok %v", tlvs, sslOK, authority)
	}
}

// Only wrong credentials are failed logins: the upstream's other refusals
// are logged as LOGIN REFUSED with their reason, never LOGIN FAILED, and
// never count toward a ban.
func TestUpstreamRefusalsAreNotFailedLogins(t *testing.T) {
	answers := []string{
		"NO [LIMIT] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=3)",
		"NO [UNAVAILABLE] Temporary authentication failure.",
		"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
		"NO [CONTACTADMIN] Account disabled",
		"NO [EXPIRED] Password expired",
		"BAD Error in IMAP command received by server.",
	}
	var n int
	script := func(u *upstreamConn) {
		u.send(courierGreeting)
		for {
			l := u.read()
			if l == "" {
				return
			}
			tag, _, _ := strings.Cut(l, " ")
			u.send(tag + " " + answers[n%len(answers)] + "\r\n")
			n++
		}
	}
	up := fakeUpstream(t, script)
	pol := gateway.Policy(config.Default())
	pol.Penalty.Failures, pol.Penalty.Delay = 2, 0
	lim, err := limiter.New(pol, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, up.upstream(), proxyConfig{limiter: lim})
	c := dial(t, p.addr)
	c.expect("* OK")
	for i := range 3 * len(answers) {
		tag := "a" + strconv.Itoa(i)
		c.send(tag + " LOGIN bob secret\r\n")
		c.expect(tag + " " + answers[i%len(answers)][:2])
	}
	for _, want := range []string{"reason=limit", "reason=unavailable", "reason=privacyrequired", "reason=contactadmin", "reason=expired", "reason=bad"} {
		waitLog(t, p, "LOGIN REFUSED, user=bob, ip=[::ffff:127.0.0.1], port=[")
		if !p.log.Contains(want) {
			t.Errorf("no LOGIN REFUSED line with %s", want)
		}
	}
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "LOGIN FAILED") {
			t.Errorf("refusal logged as a failed login: %q", l)
		}
	}
	if bans := lim.Bans(time.Now()); len(bans) != 0 {
		t.Errorf("refusals started bans: %+v", bans)
	}
	if probs := p.srv.UpstreamProblems(); len(probs) != 1 || !strings.Contains(probs[0], "PRIVACYREQUIRED") {
		t.Errorf("upstream problems = %q, want the PRIVACYREQUIRED one", probs)
	}
	logged := 0
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "login_trusted_networks") {
			logged++
		}
	}
	if logged != 1 {
		t.Errorf("the misconfiguration was logged %d times, want once", logged)
	}
}

// An upstream that advertises LOGINDISABLED to imapgate is named at once,
// by the start-up probe, with the fix.
func TestProbeReportsLoginDisabled(t *testing.T) {
	up := fakeUpstream(t, simpleServer) // its CAPABILITY says LOGINDISABLED
	p := startProxy(t, up.upstream(), proxyConfig{})
	if err := p.srv.ProbeUpstream(context.Background()); err != nil {
		t.Fatal(err)
	}
	probs := p.srv.UpstreamProblems()
	if len(probs) != 1 || !strings.Contains(probs[0], "LOGINDISABLED") || !strings.Contains(probs[0], "login_trusted_networks") {
		t.Fatalf("upstream problems = %q", probs)
	}
	waitLog(t, p, "advertises LOGINDISABLED")
	// A reload's new upstream starts with a clean slate.
	p.srv.SetUpstream(fakeUpstream(t, func(u *upstreamConn) {
		u.send("* OK [CAPABILITY IMAP4rev1 ID] ready\r\n")
		u.read()
		u.send("* CAPABILITY IMAP4rev1 ID\r\nimapgate-probe1 OK done\r\n")
		u.read()
	}).upstream(), proxy.Login{})
	if err := p.srv.ProbeUpstream(context.Background()); err != nil {
		t.Fatal(err)
	}
	if probs := p.srv.UpstreamProblems(); len(probs) != 0 {
		t.Fatalf("after reload, upstream problems = %q", probs)
	}
}

func dialSNI(t *testing.T, addr, name string) *client {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: name})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// A device retrying a stale password is one failure, not ten: only the
// first is the LOGIN FAILED line fail2ban counts. Ten different wrong
// passwords for one user ban that user on that address: the upstream is
// no longer asked for it, and another user from the same address still
// logs in.
func TestStalePasswordAndUserBan(t *testing.T) {
	var asked atomic.Int32
	script := func(u *upstreamConn) {
		u.send(courierGreeting)
		for {
			l := u.read()
			if l == "" {
				return
			}
			tag, rest, _ := strings.Cut(l, " ")
			asked.Add(1)
			if rest == `LOGIN "bob" "secret"` {
				u.send(tag + " OK LOGIN Ok.\r\n")
			} else {
				u.send(tag + " NO Login failed.\r\n")
			}
		}
	}
	up := fakeUpstream(t, script)
	p, lim := startUndelayedProxy(t, up)
	c := dial(t, p.addr)
	c.expect("* OK")
	for i := range 12 {
		c.send("s" + strconv.Itoa(i) + " LOGIN phone oldpassword\r\n")
		c.expect("s" + strconv.Itoa(i) + " NO")
	}
	var failed, again int
	for _, l := range p.log.Lines() {
		switch {
		case strings.Contains(l, "LOGIN FAILED, user=phone"):
			failed++
		case strings.Contains(l, "LOGIN FAILED AGAIN, user=phone"):
			again++
		}
	}
	if failed != 1 || again != 11 {
		t.Errorf("LOGIN FAILED %d times and AGAIN %d times, want 1 and 11: %q", failed, again, p.log.Lines())
	}
	if bans := lim.Bans(time.Now()); len(bans) != 0 {
		t.Errorf("a stale password started bans: %+v", bans)
	}

	for i := range 10 {
		c.send("g" + strconv.Itoa(i) + " LOGIN alice guess" + strconv.Itoa(i) + "\r\n")
		c.expect("g" + strconv.Itoa(i) + " NO")
	}
	waitLog(t, p, "user alice banned until")
	before := asked.Load()
	c.send("h LOGIN alice right\r\n")
	c.expect("h NO [AUTHENTICATIONFAILED] Too many failed logins")
	if asked.Load() != before {
		t.Error("the upstream was asked for a banned user")
	}
	waitLog(t, p, "LOGIN REFUSED, user=alice, ip=[::ffff:127.0.0.1], port=[")
	c.send("b LOGIN bob secret\r\n")
	c.expect("b OK")
	bans := lim.Bans(time.Now())
	if len(bans) != 1 || bans[0].User != "alice" {
		t.Errorf("bans = %+v, want alice's only", bans)
	}
}

// An upstream that advertises LOGINDISABLED (courier with
// IMAP_TLS_REQUIRED=1 on the hop) answers every login "NO STARTTLS
// required", without [PRIVACYREQUIRED]. That is its configuration, not the
// clients' passwords: the logins are LOGIN REFUSED, reason=privacyrequired,
// never LOGIN FAILED (fail2ban's courier-auth filter bans on those), and
// twelve users failing so from one address ban nothing (a fresh admin saw
// an office banned for it).
func TestLoginDisabledUpstreamBansNobody(t *testing.T) {
	up := loginAnswering(t, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Courier-IMAP ready.\r\n",
		func(tag string) string { return tag + " NO STARTTLS required\r\n" })
	p, lim := startUndelayedProxy(t, up)
	for i := range 12 {
		c := dial(t, p.addr)
		c.expect("* OK")
		c.send("a1 LOGIN user" + strconv.Itoa(i) + " secret\r\n")
		c.expect("a1 NO STARTTLS required")
		c.conn.Close()
	}
	waitLog(t, p, "LOGIN REFUSED, user=user11, ip=[::ffff:127.0.0.1], port=[")
	if p.log.Contains("LOGIN FAILED") || p.log.Contains("banned") {
		t.Errorf("the upstream's refusals were counted as failed logins: %q", p.log.Lines())
	}
	if !p.log.Contains("reason=privacyrequired") {
		t.Errorf("no reason=privacyrequired: %q", p.log.Lines())
	}
	if bans := lim.Bans(time.Now()); len(bans) != 0 {
		t.Errorf("bans: %+v", bans)
	}
}

// startUndelayedProxy is a proxy in front of up with the default limits
// but no delay before a failed login's NO, so a test can fail many.
func startUndelayedProxy(t *testing.T, up *upstreamScript) (*testProxy, *limiter.Limiter) {
	t.Helper()
	pol := gateway.Policy(config.Default())
	pol.Penalty.Delay = 0
	lim, err := limiter.New(pol, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return startProxy(t, up.upstream(), proxyConfig{limiter: lim}), lim
}
