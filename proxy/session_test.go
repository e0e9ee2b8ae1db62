package proxy_test

import (
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"imapgate/conntable"
	"imapgate/internal/sock"
	"imapgate/proxy"
	"imapgate/upstream"
)

func TestGreetingAndCapabilitiesRewritten(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	g := c.expect("* OK [CAPABILITY ")
	if strings.Contains(g, "STARTTLS") {
		t.Errorf("greeting still offers STARTTLS: %q", g)
	}
	c.send("a1 CAPABILITY\r\n")
	if l := c.expect("* CAPABILITY"); strings.Contains(l, "STARTTLS") || strings.Contains(l, "LOGINDISABLED") {
		t.Errorf("capability line not rewritten: %q", l)
	}
	c.expect("a1 OK")
	c.send("a2 STARTTLS\r\n")
	c.expect("a2 BAD")
	c.send("a3 LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("a3 OK")
	c.expectEOF()
	waitLog(t, p, "LOGOUT, ip=[::ffff:127.0.0.1], port=[")
	if !p.log.Contains("Connection, ip=[::ffff:127.0.0.1]") {
		t.Errorf("no Connection line: %q", p.log.Lines())
	}
}

// waitLog waits for a log line (the session logs after the client sees EOF).
func waitLog(t *testing.T, p *testProxy, sub string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if p.log.Contains(sub) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line containing %q in %q", sub, p.log.Lines())
}

func TestLoginWithLiteralsAndPipelinedCommandsHeld(t *testing.T) {
	held := make(chan bool, 1)
	up := fakeUpstream(t, func(u *upstreamConn) {
		u.send(courierGreeting)
		login := u.read()
		if login != `a1 LOGIN "bob" "secret"` {
			u.send("a1 NO unexpected " + login + "\r\n")
			return
		}
		// Courier's imaplogin would swallow anything that arrived with
		// LOGIN; the proxy must hold it until the tagged OK.
		held <- u.quiet(150 * time.Millisecond)
		u.send("a1 OK LOGIN Ok.\r\n")
		for _, want := range []string{"a2 SELECT INBOX", "a3 NOOP"} {
			if got := u.read(); got != want {
				u.send("* BAD got " + got + "\r\n")
				return
			}
		}
		u.send("* 1 EXISTS\r\na2 OK [READ-WRITE] Ok\r\na3 OK NOOP done\r\n")
		u.read()
	})
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN {3}\r\n")
	c.expect("+ ")
	c.send("bob {6}\r\n")
	c.expect("+ ")
	c.send("secret\r\na2 SELECT INBOX\r\na3 NOOP\r\n") // pipelined in one write
	c.expect("a1 OK")
	if !<-held {
		t.Error("commands pipelined after LOGIN reached the upstream before its OK")
	}
	c.expect("* 1 EXISTS")
	c.expect("a2 OK")
	c.expect("a3 OK")
	waitLog(t, p, "LOGIN, user=bob, ip=[::ffff:127.0.0.1]")
}

func TestNonSyncLiteralLogin(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN {3+}\r\nbob {6+}\r\nsecret\r\n")
	c.expect("a1 OK")
	waitLog(t, p, "LOGIN, user=bob,")
}

func TestAuthenticatePlain(t *testing.T) {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw-sasl-ir"))
	cont := base64.StdEncoding.EncodeToString([]byte("\x00carol\x00pw-continued"))
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})

	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 AUTHENTICATE PLAIN " + ir + "\r\n")
	c.expect("a1 OK")
	waitLog(t, p, "LOGIN, user=alice,")

	c = dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 AUTHENTICATE PLAIN\r\n")
	c.expect("+")
	c.send(cont + "\r\n")
	c.expect("a1 OK")
	waitLog(t, p, "LOGIN, user=carol,")

	// Cancelled exchange: no login, no user learned.
	c = dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 AUTHENTICATE PLAIN\r\n")
	c.expect("+")
	c.send("*\r\n")
	c.expect("a1 BAD")
	// A cancel is not a failed login: not the line fail2ban bans on.
	waitLog(t, p, "LOGIN REFUSED, method=PLAIN, ip=[::ffff:127.0.0.1], port=[")
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "LOGIN FAILED") {
			t.Errorf("cancelled AUTHENTICATE logged as %q", l)
		}
	}
}

func TestLoginFailedIsLoggedWithRealAddressAndNoSecrets(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN bob hunter2-wrong\r\n")
	c.expect("a1 NO")
	c.send("a2 LOGIN \"x], ip=[10.9.9.9\" hunter2-wrong\r\n")
	c.expect("a2 NO")
	waitLog(t, p, "LOGIN FAILED, user=bob, ip=[::ffff:127.0.0.1], port=[")
	waitLog(t, p, "LOGIN FAILED, user=x.. ip=.10.9.9.9, ip=[::ffff:127.0.0.1]")
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "hunter2") || strings.Count(l, "ip=[") > 1 {
			t.Errorf("log line leaks a password or a forged address: %q", l)
		}
	}
}

func TestPasswordAndSASLPayloadNeverLogged(t *testing.T) {
	secret := "S3cr3t-never-logged"
	payload := base64.StdEncoding.EncodeToString([]byte("\x00bob\x00" + secret))
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	for _, script := range [][]string{
		{"a1 LOGIN bob " + secret + "\r\n"},
		{"a1 LOGIN {3}\r\n", "bob {19}\r\n", secret + "\r\n"},
		{"a1 AUTHENTICATE PLAIN " + payload + "\r\n"},
		{"a1 AUTHENTICATE PLAIN\r\n", payload + "\r\n"},
	} {
		c := dial(t, p.addr)
		c.expect("* OK")
		for i, s := range script {
			c.send(s)
			if i < len(script)-1 {
				c.expect("+")
			}
		}
		c.expect("a1 ")
		c.conn.Close()
	}
	waitLog(t, p, "DISCONNECTED")
	for _, l := range p.log.Lines() {
		if strings.Contains(l, secret) || strings.Contains(l, payload) || strings.Contains(l, payload[:12]) {
			t.Fatalf("log line contains a secret: %q", l)
		}
	}
}

func TestIDAnsweredWhenUpstreamLacksIt(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 ID (\"name\" \"mutt\" \"version\" {3}\r\n")
	c.expect("+ ")
	c.send("2.0)\r\n")
	c.expect("* ID NIL")
	c.expect("a1 OK")
	c.send("a2 NOOP\r\n")
	c.expect("a2 OK")
	for len(up.seen) > 0 {
		if l := <-up.seen; strings.Contains(l, "ID") {
			t.Errorf("ID reached an upstream that does not support it: %q", l)
		}
	}
}

func TestLoginPhaseBounds(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{login: proxy.Login{MaxLine: 1024, MaxLiteral: 1024, MaxCommands: 3}})

	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 NOOP " + strings.Repeat("x", 2000) + "\r\n")
	c.expect("* BYE [LIMIT]")
	c.expectEOF()

	c = dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN {5000}\r\n")
	c.expect("* BYE [LIMIT]")
	c.expectEOF()

	c = dial(t, p.addr)
	c.expect("* OK")
	for i := 0; i < 3; i++ {
		c.send("a NOOP\r\n")
		c.expect("a OK")
	}
	c.send("a NOOP\r\n")
	c.expect("* BYE [LIMIT] Too many commands")
	c.expectEOF()

	// Garbage: another protocol talking to the port is cut off.
	c = dial(t, p.addr)
	c.expect("* OK")
	c.send("\x00\x01\r\n")
	c.expect("* BAD")
	c.send("{}\r\n")
	c.expect("* BAD")
	c.send("((\r\n")
	c.expect("* BYE")
	c.expectEOF()
}

func TestEarlyClose(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN {3}\r\n")
	c.expect("+")
	c.conn.Close()
	waitLog(t, p, "Disconnected, ip=[::ffff:127.0.0.1]")
	waitEmpty(t, p)
}

func waitEmpty(t *testing.T, p *testProxy) {
	t.Helper()
	for i := 0; i < 200 && p.srv.Table().Count() > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.srv.Table().Count(); n != 0 {
		t.Fatalf("table still holds %d entries", n)
	}
}

func TestUpstreamDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, &upstream.TCP{Address: addr, ConnectTimeout: time.Second}, proxyConfig{})
	start := time.Now()
	c := dial(t, p.addr)
	c.expect("* BYE [UNAVAILABLE]")
	c.expectEOF()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("BYE took %v", d)
	}
	waitLog(t, p, "upstream unavailable: connect "+addr)
}

func TestUpstreamNeverGreets(t *testing.T) {
	up := fakeUpstream(t, func(u *upstreamConn) { u.read() })
	p := startProxy(t, up.upstream(), proxyConfig{login: proxy.Login{GreetingTimeout: 200 * time.Millisecond}})
	c := dial(t, p.addr)
	c.expect("* BYE [UNAVAILABLE]")
	waitLog(t, p, "no greeting from")
}

func TestClientNeverFinishesTLS(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	waitCount(t, p, 1)
	if s := p.srv.Table().List(nil, 0)[0].State; s != "handshake" {
		t.Fatalf("state %s, want handshake", s)
	}
	// The handshake timeout passes (time is a parameter; no sleep).
	p.srv.Table().Expire(time.Now().Add(11 * time.Second))
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after the handshake timeout")
	}
	waitEmpty(t, p)
	waitLog(t, p, "TLS handshake timed out")
}

// waitCount waits until the table counts n entries and lists them all:
// Insert counts an entry before it links it into its bucket, so the
// count can lead the list by a moment (a CI run caught List empty).
func waitCount(t *testing.T, p *testProxy, n int) {
	t.Helper()
	settled := func() bool { return p.srv.Table().Count() == n && len(p.srv.Table().List(nil, 0)) == n }
	for i := 0; i < 300 && !settled(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !settled() {
		t.Fatalf("table count %d (%d listed), want %d", p.srv.Table().Count(), len(p.srv.Table().List(nil, 0)), n)
	}
}

func TestTimeouts(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})

	pre := dial(t, p.addr)
	pre.expect("* OK")
	est := loggedIn(t, p.addr, "a1", "bob")

	// 61 s later the login-phase session is cut off; the logged-in one is not.
	p.srv.Table().Expire(time.Now().Add(61 * time.Second))
	pre.expect("* BYE Disconnected for inactivity.")
	pre.expectEOF()
	est.send("a2 NOOP\r\n")
	est.expect("a2 OK")

	// Traffic at +61 s refreshed it; 30 more minutes of silence end it as courier does.
	p.srv.Table().Expire(time.Now().Add(32 * time.Minute))
	est.expect("* BYE Disconnected for inactivity.")
	waitLog(t, p, "TIMEOUT, user=bob, ip=[::ffff:127.0.0.1], port=[")
	waitEmpty(t, p)
}

func TestEarlyDropOnlyUnassured(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{table: conntable.Config{Max: 2, Buckets: 1}})
	a := loggedIn(t, p.addr, "a1", "bob")
	b := dial(t, p.addr)
	b.expect("* OK")

	// Full: the new client evicts the unauthenticated one once it has
	// stalled for a while (a moving one is never dropped).
	p.srv.Table().Expire(time.Now().Add(2 * time.Second))
	c := dial(t, p.addr)
	c.expect("* OK")
	b.expect("* BYE [UNAVAILABLE] Server busy")
	c.send("a1 LOGIN bob secret\r\n")
	c.expect("a1 OK")

	// Full of logged-in sessions: nobody is evicted, the newcomer is
	// refused with a reset, as every refusal before TLS is (conntrack
	// keeps it 10 s, not TIME_WAIT's 120 s).
	raw, err := net.Dial("tcp", p.addr)
	if err == nil { // else the reset came before the connect returned
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = raw.Read(make([]byte, 1))
		raw.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("newcomer to a table full of established sessions: %v, want a reset", err)
	}
	a.send("a2 NOOP\r\n")
	a.expect("a2 OK")
	st := p.srv.Table().Stats()
	if st.EarlyDrop != 1 || st.InsertFailed != 1 {
		t.Errorf("stats %+v, want early_drop 1, insert_failed 1", st)
	}
	waitLog(t, p, "conntable: table full, dropping connection")
}

func TestAdminDeleteClosesSession(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a1", "bob")
	list := p.srv.Table().List(nil, 0)
	if len(list) != 1 || list[0].User != "bob" || list[0].State != "established" {
		t.Fatalf("list = %+v", list)
	}
	if !p.srv.Table().Delete(list[0].ID) {
		t.Fatal("delete failed")
	}
	c.expect("* BYE")
	waitLog(t, p, "DISCONNECTED, user=bob")
	waitEmpty(t, p)
}

// The client closes its sending side after a command; the answer that the
// upstream sends afterwards still reaches it.
func TestHalfCloseAfterLogin(t *testing.T) {
	up := fakeUpstream(t, func(u *upstreamConn) {
		u.send(courierGreeting)
		u.read() // LOGIN
		u.send("a1 OK LOGIN Ok.\r\n")
		u.read() // a2 NOOP
		if u.read() != "" {
			return
		}
		// EOF from the proxy: answer late, then close.
		u.send("a2 OK NOOP after your EOF\r\n")
	})
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a1", "bob")
	c.send("a2 NOOP\r\n")
	if err := c.conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.expect("a2 OK NOOP after your EOF")
	c.expectEOF()
	waitLog(t, p, "DISCONNECTED, user=bob")
	waitEmpty(t, p)
}

// An idle logged-in session gives up both relay goroutines (parks), and
// still relays what either side sends, streams longer than the idle
// detector, and times out the way courier does.
func TestIdleSessionParks(t *testing.T) {
	if !sock.Raw {
		t.Skip("no poller on this platform: idle directions keep their goroutines")
	}
	push := make(chan string)
	up := fakeUpstream(t, func(u *upstreamConn) {
		u.send(courierGreeting)
		u.read() // LOGIN
		u.send("a1 OK LOGIN Ok.\r\n")
		go func() { // whatever the client sends goes to up.seen
			for u.read() != "" {
			}
		}()
		for msg := range push {
			if msg == "slow" {
				// A literal trickled over 600 ms: longer than parkAfter.
				u.send("* 1 FETCH (BODY[] {30}\r\n")
				for i := 0; i < 3; i++ {
					time.Sleep(200 * time.Millisecond)
					u.send("0123456789")
				}
				u.send(")\r\na3 OK FETCH done\r\n")
				continue
			}
			u.send(msg)
		}
	})
	t.Cleanup(func() { close(push) })
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a1", "bob")
	waitParked := func(n int) {
		t.Helper()
		for i := 0; i < 300 && p.srv.Parked() != n; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if got := p.srv.Parked(); got != n {
			t.Fatalf("%d directions parked, want %d", got, n)
		}
	}
	waitParked(2)

	push <- "* 2 EXISTS\r\n" // the server speaks first (IDLE update)
	c.expect("* 2 EXISTS")
	waitParked(2)

	c.send("a2 NOOP\r\n") // the client speaks first
	for l := ""; l != "a2 NOOP"; {
		select {
		case l = <-up.seen:
		case <-time.After(5 * time.Second):
			t.Fatal("NOOP never reached the upstream from a parked session")
		}
	}
	push <- "a2 OK NOOP done\r\n"
	c.expect("a2 OK")

	push <- "slow"
	c.expect("* 1 FETCH (BODY[] {30}")
	body := make([]byte, 30)
	if _, err := io.ReadFull(c.r, body); err != nil || string(body) != strings.Repeat("0123456789", 3) {
		t.Fatalf("slow literal: %q, %v", body, err)
	}
	c.expect(")")
	c.expect("a3 OK")
	waitParked(2)

	// Parked sessions still time out: 30 min of silence.
	p.srv.Table().Expire(time.Now().Add(31 * time.Minute))
	c.expect("* BYE Disconnected for inactivity.")
	waitLog(t, p, "TIMEOUT, user=bob")
	waitEmpty(t, p)
	if p.srv.Parked() != 0 {
		t.Fatalf("%d directions still parked after the session ended", p.srv.Parked())
	}
}

// A silent flood times out many connections at once: their "TLS handshake
// timed out." lines are throttled as refusal lines are, 50 per 5 s.
func TestHandshakeTimeoutLinesAreThrottled(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{table: conntable.Config{Max: 128}})
	const silent = 60
	for i := 0; i < silent; i++ {
		raw, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
	}
	waitCount(t, p, silent)
	if n := p.srv.Table().Expire(time.Now().Add(11 * time.Second)); n != silent {
		t.Fatalf("the timeout killed %d, want %d", n, silent)
	}
	waitEmpty(t, p)
	waitLog(t, p, "TLS handshake timed out")
	time.Sleep(50 * time.Millisecond) // any line past the cap would be written by now
	n := 0
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "TLS handshake timed out") {
			n++
		}
	}
	if n != 50 {
		t.Fatalf("%d handshake timeout lines for %d timeouts, want the throttle's 50", n, silent)
	}
	// No later line carries the count of the 10 suppressed: the flush,
	// after the interval, writes it.
	p.srv.FlushSuppressed(time.Now().Add(6 * time.Second))
	waitLog(t, p, "handshake timeout: 10 callbacks suppressed")
}
