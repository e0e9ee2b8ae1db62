package proxy_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"imapgate/certs"
	"imapgate/conntable"
	"imapgate/courierlog"
	"imapgate/limiter"
	"imapgate/proxy"
	"imapgate/upstream"
)

// testProxy is a proxy on 127.0.0.1:0 with an in-memory log.
type testProxy struct {
	srv  *proxy.Server
	addr string
	log  *courierlog.Memory
}

type proxyConfig struct {
	table   conntable.Config
	limiter *limiter.Limiter
	login   proxy.Login
	events  proxy.Events
}

func startProxy(t testing.TB, up upstream.Dialer, pc proxyConfig) *testProxy {
	t.Helper()
	cert, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if pc.table.Max == 0 {
		pc.table.Max = 64
	}
	mem := &courierlog.Memory{}
	log := courierlog.New(mem, courierlog.Options{TLS: true})
	table, err := conntable.New(pc.table, func(m string) { log.Message(courierlog.Warning, m) })
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Options{
		TLSConfig: certs.NewStatic(cert).ServerConfig(0, false),
		Upstream:  up,
		Log:       log,
		Table:     table,
		Limiter:   pc.limiter,
		Login:     pc.login,
		Events:    pc.events,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &testProxy{srv: srv, addr: ln.Addr().String(), log: mem}
}

// client is a raw IMAP client over TLS for scripted transcripts.
type client struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// loggedIn dials addr, reads the greeting and logs in as user (with any
// password: the fake upstreams take it) under tag, checking the OK.
func loggedIn(t *testing.T, addr, tag, user string) *client {
	t.Helper()
	c := dial(t, addr)
	c.expect("* OK")
	c.send(tag + " LOGIN " + user + " secret\r\n")
	c.expect(tag + " OK")
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one line without CRLF.
func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// expect reads a line and checks its prefix.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want prefix %q", l, prefix)
	}
	return l
}

// expectEOF checks the server closed the connection.
func (c *client) expectEOF() {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err == nil {
		c.t.Fatalf("want EOF, got %q", l)
	}
}

// upstreamScript is a fake IMAP server that runs script for each
// connection it accepts.
type upstreamScript struct {
	t    testing.TB
	ln   net.Listener
	seen chan string // every line the fake server read
}

func fakeUpstream(t testing.TB, script func(u *upstreamConn)) *upstreamScript {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	us := &upstreamScript{t: t, ln: ln, seen: make(chan string, 100)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				script(&upstreamConn{c: c, r: bufio.NewReader(c), seen: us.seen})
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return us
}

func (us *upstreamScript) upstream() upstream.Dialer {
	return &upstream.TCP{Address: us.ln.Addr().String(), ConnectTimeout: time.Second}
}

type upstreamConn struct {
	c    net.Conn
	r    *bufio.Reader
	seen chan string
}

func (u *upstreamConn) send(s string) { io.WriteString(u.c, s) }

// read returns the next line (without CRLF), or "" on EOF.
func (u *upstreamConn) read() string {
	l, err := u.r.ReadString('\n')
	l = strings.TrimRight(l, "\r\n")
	if err == nil {
		u.seen <- l
	}
	return l
}

// quiet reports whether nothing arrives within d.
func (u *upstreamConn) quiet(d time.Duration) bool {
	u.c.SetReadDeadline(time.Now().Add(d))
	defer u.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := u.r.Peek(1)
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

const courierGreeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE STARTTLS IDLE] Courier-IMAP ready.\r\n"

// simpleServer answers LOGIN bob/secret and AUTHENTICATE PLAIN, NOOP,
// CAPABILITY and LOGOUT like courier, then echoes tagged OKs.
func simpleServer(u *upstreamConn) {
	u.send(courierGreeting)
	loggedIn := false
	for {
		l := u.read()
		if l == "" {
			return
		}
		tag, rest, _ := strings.Cut(l, " ")
		cmd, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(cmd) {
		case "LOGIN":
			if args == `"bob" "secret"` {
				loggedIn = true
				u.send(tag + " OK LOGIN Ok.\r\n")
			} else {
				u.send(tag + " NO Login failed.\r\n")
			}
		case "AUTHENTICATE":
			if !strings.Contains(args, " ") {
				u.send("+ \r\n")
				if resp := u.read(); resp == "*" {
					u.send(tag + " BAD AUTHENTICATE aborted.\r\n")
					continue
				}
			}
			loggedIn = true
			u.send(tag + " OK AUTHENTICATE Ok.\r\n")
		case "CAPABILITY":
			u.send("* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + tag + " OK CAPABILITY completed\r\n")
		case "LOGOUT":
			u.send("* BYE Courier-IMAP server shutting down\r\n" + tag + " OK LOGOUT completed\r\n")
			return
		default:
			if !loggedIn && strings.ToUpper(cmd) != "NOOP" {
				u.send(tag + " BAD Error in IMAP command received by server.\r\n")
				continue
			}
			u.send(tag + " OK " + cmd + " completed\r\n")
		}
	}
}
