package proxy_test

import (
	"io"
	"strings"
	"testing"
	"time"
)

// expectEOFWithin checks the server ended the session within d: TLS
// close_notify, then the TCP FIN (an orderly EOF on the socket itself, not
// a reset and not a timeout).
func (c *client) expectEOFWithin(d time.Duration) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	defer c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, err := c.r.ReadString('\n'); err == nil {
		c.t.Fatalf("want EOF, got %q", l)
	} else if err != io.EOF {
		c.t.Fatalf("want close_notify within %v, got %v", d, err)
	}
	raw := c.conn.NetConn()
	var buf [512]byte
	for {
		_, err := raw.Read(buf[:])
		if err == io.EOF {
			return
		}
		if err != nil {
			c.t.Fatalf("want the server's FIN within %v after close_notify, got %v", d, err)
		}
	}
}

// RFC 9051 §6.1.3: after LOGOUT's OK the server closes. The upstream's
// close reaches the client at once, and the log says LOGOUT, not TIMEOUT.
func TestLogoutClosesAtOnce(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a", "bob")
	c.send("b LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("b OK")
	c.expectEOFWithin(2 * time.Second)
	waitLog(t, p, "LOGOUT, user=bob, ip=[")
}

// An upstream that dies mid-session (a crashed imapd) ends the client's
// session at once, with courier's DISCONNECTED line.
func TestUpstreamDeathClosesClient(t *testing.T) {
	up := fakeUpstream(t, func(u *upstreamConn) {
		u.send(courierGreeting)
		u.read() // LOGIN
		u.send("a OK LOGIN Ok.\r\n")
		u.read() // NOOP
		// and dies without answering
	})
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a", "bob")
	c.send("b NOOP\r\n")
	c.expectEOFWithin(2 * time.Second)
	waitLog(t, p, "DISCONNECTED, user=bob, ip=[")
}

// A synchronising literal the upstream refuses (no "+") never comes: the
// tracker must not skip the next commands as its data, so the LOGOUT
// after it is seen.
func TestRefusedLiteralDoesNotBlindTheLog(t *testing.T) {
	up := fakeUpstream(t, func(u *upstreamConn) {
		u.send(courierGreeting)
		u.read()
		u.send("a1 OK LOGIN Ok.\r\n")
		if l := u.read(); !strings.HasPrefix(l, "a2 APPEND") {
			t.Errorf("upstream got %q", l)
			return
		}
		u.send("a2 NO [TOOBIG] Message too large.\r\n")
		if l := u.read(); l != "a3 LOGOUT" {
			t.Errorf("upstream got %q, want a3 LOGOUT", l)
			return
		}
		u.send("* BYE Courier-IMAP server shutting down\r\na3 OK LOGOUT completed\r\n")
	})
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := loggedIn(t, p.addr, "a1", "bob")
	c.send("a2 APPEND INBOX {157286400}\r\n")
	c.expect("a2 NO [TOOBIG]")
	c.send("a3 LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("a3 OK")
	c.expectEOFWithin(2 * time.Second)
	waitLog(t, p, "LOGOUT, user=bob, ip=[")
}

// When imapgate cuts a client off, the reason reaches it even though the
// client had sent far more than was read: 10,000 pipelined commands get
// their first answers and then the BYE, not a reset.
func TestCutOffClientGetsItsBye(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	c := dial(t, p.addr)
	c.expect("* OK")
	var b strings.Builder
	for i := range 10000 {
		b.WriteString("n")
		b.WriteString(strings.Repeat("x", i%3))
		b.WriteString(" NOOP\r\n")
	}
	// All of it fits in loopback's socket buffers, so the write completes
	// although the server stops reading after 32 commands; the client
	// reads only then, as a single-threaded client does.
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	for {
		l := c.line()
		if strings.HasPrefix(l, "* BYE") {
			if !strings.Contains(l, "Too many commands") {
				t.Fatalf("got %q", l)
			}
			break
		}
		if !strings.Contains(l, " OK ") {
			t.Fatalf("got %q before the BYE", l)
		}
	}
	c.expectEOFWithin(3 * time.Second)
}
