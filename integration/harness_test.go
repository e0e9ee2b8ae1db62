// Package integration drives imapgate end to end: real clients (go-imap's
// imapclient, curl, python3 imaplib, openssl s_client) against a proxy on
// 127.0.0.1:0, with the embedded server as upstream here and the real
// courier-imap in courier_test.go.
package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"imapgate/certs"
	"imapgate/config"
	"imapgate/courierlog"
	"imapgate/embedded"
	"imapgate/gateway"
	"imapgate/limiter"
	"imapgate/proxy"
	"imapgate/upstream"
)

type gate struct {
	srv     *proxy.Server
	addr    string
	log     *courierlog.Memory
	limiter *limiter.Limiter
}

type gateOptions struct {
	cfg      *config.Config  // nil: defaults
	upstream upstream.Dialer // nil: embedded with accounts
	accounts []embedded.Account
	trusted  []string // PROXY header sources
	logFile  string   // also write the log here, in syslog file format
	// exec starts courier per session (upstream.Exec) with argv and
	// the variables of courier's config files.
	exec     []string
	execVars map[string]string
}

// tee writes every line to both sinks.
type tee [2]courierlog.Sink

func (t tee) Write(p courierlog.Priority, msg []byte) {
	t[0].Write(p, msg)
	t[1].Write(p, msg)
}

// startGate builds imapgate from a config with gateway.New, as
// cmd/imapgate does, with a generated certificate and an in-memory log.
func startGate(t *testing.T, o gateOptions) *gate {
	t.Helper()
	cfg := config.Default()
	if o.cfg != nil {
		c := *o.cfg // changed below
		cfg = &c
	}
	cert, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	mem := &courierlog.Memory{}
	var sink courierlog.Sink = mem
	if o.logFile != "" {
		f, err := courierlog.OpenFile(o.logFile, "mailhost", "imapd-ssl")
		if err != nil {
			t.Fatal(err)
		}
		sink = tee{mem, f}
	}
	log := courierlog.New(sink, courierlog.Options{TLS: true})
	switch {
	case o.exec != nil:
		up, err := upstream.NewExec(o.exec, o.execVars, log)
		if err != nil {
			t.Fatal(err)
		}
		o.upstream = up
		cfg.Upstream.Mode = "exec" // courier writes the session lines itself
	case o.upstream == nil:
		cfg.Upstream.Address = "embedded"
	}
	if len(o.trusted) > 0 {
		cfg.Listen.ProxyProtocolFrom = nil
		for _, s := range o.trusted {
			var p config.Prefix
			if err := p.UnmarshalText([]byte(s)); err != nil {
				t.Fatal(err)
			}
			cfg.Listen.ProxyProtocolFrom = append(cfg.Listen.ProxyProtocolFrom, p)
		}
		cfg.Listen.ProxyHeaderTimeout = config.Duration(2 * time.Second)
	}
	g, err := gateway.New(cfg, gateway.Options{Log: log, Certs: certs.NewStatic(cert), Upstream: o.upstream, Accounts: o.accounts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go g.Server.Serve(g.Listener(ln))
	t.Cleanup(func() { g.Server.Close() })
	return &gate{srv: g.Server, addr: addr, log: mem, limiter: g.Limiter}
}

var clientTLS = &tls.Config{InsecureSkipVerify: true}

// dialFrom opens a TLS connection from a chosen 127.x.y.z source.
func dialFrom(src, addr string) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return tls.DialWithDialer(d, "tcp", addr, clientTLS)
}

// login logs user in over an imapclient from src.
func login(src, addr, user, pass string) (*imapclient.Client, error) {
	conn, err := dialFrom(src, addr)
	if err != nil {
		return nil, err
	}
	c := imapclient.New(conn, nil)
	if err := c.WaitGreeting(); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login: %w", err)
	}
	return c, nil
}

// need skips the test when a real client program is missing, saying how to
// get it; CI installs them all (.ci/run).
func need(t *testing.T, prog string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s, or run .ci/run)", prog, prog)
	}
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(10*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// pollUntil calls cond every 10 ms until it holds (true) or limit passes (false).
func pollUntil(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func waitLog(t *testing.T, g *gate, sub string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("log line %q (have %q)", sub, g.log.Lines()), func() bool { return g.log.Contains(sub) })
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newClient(conn net.Conn) *imapclient.Client {
	c := imapclient.New(conn, nil)
	c.WaitGreeting()
	return c
}

func tlsClient(raw net.Conn) *tls.Conn { return tls.Client(raw, clientTLS) }
