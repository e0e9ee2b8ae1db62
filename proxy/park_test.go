package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"imapgate/config"
	"imapgate/conntable"
	"imapgate/gateway"
	"imapgate/internal/sock"
	"imapgate/limiter"
)

// parkProxy is a proxy with the default limits, so that it accepts raw
// and parks silent connections (Linux).
func parkProxy(t *testing.T, table conntable.Config) *testProxy {
	t.Helper()
	if !sock.Raw {
		t.Skip("silent connections park only on Linux without imapgate_portable")
	}
	lim, err := limiter.New(gateway.Policy(config.Default()), limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return startProxy(t, fakeUpstream(t, simpleServer).upstream(), proxyConfig{limiter: lim, table: table})
}

// silentConns opens n connections that send nothing, from 127.0.9.x
// (5 per address: under the per-address limits).
func silentConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for i := 0; i < n; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 9, byte(i/5+1))}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

func waitParked(t *testing.T, p *testProxy, n int) {
	t.Helper()
	for i := 0; i < 500 && p.srv.ParkedSilent() != n; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.srv.ParkedSilent(); got != n {
		t.Fatalf("%d connections parked, want %d", got, n)
	}
}

func expectClosed(t *testing.T, cs []net.Conn) {
	t.Helper()
	for i, c := range cs {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatalf("silent connection %d still open", i)
		}
	}
}

// Connections that have sent nothing wait in the poller with their table
// entries but without a goroutine each; an honest client meanwhile logs in;
// the silent timeout (a table kill) closes them with no goroutine, releases
// their entries and tickets, and leaks no descriptor.
func TestSilentConnectionsParkWithoutGoroutines(t *testing.T) {
	checkFDs(t)
	p := parkProxy(t, conntable.Config{Max: 64})
	before := runtime.NumGoroutine()
	cs := silentConns(t, p.addr, 40)
	waitParked(t, p, 40)
	waitCount(t, p, 40)
	if grew := runtime.NumGoroutine() - before; grew >= 10 {
		t.Fatalf("40 silent connections took %d goroutines", grew)
	}
	for _, s := range p.srv.Table().List(nil, 0) {
		if s.State != "handshake" || !s.Silent {
			t.Fatalf("parked entry %+v, want a silent handshake entry", s)
		}
	}
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN bob secret\r\n")
	c.expect("a1 OK")
	if n := p.srv.Table().Expire(time.Now().Add(6 * time.Second)); n != 40 {
		t.Fatalf("the silent timeout killed %d, want 40", n)
	}
	if got := p.srv.ParkedSilent(); got != 0 {
		t.Fatalf("%d still parked after the kill", got) // the kill closes them itself
	}
	waitCount(t, p, 1)
	for i, c := range cs {
		// Reset, not closed with FIN: conntrack forgets a reset in 10 s.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("silent connection %d after the timeout: %v, want a reset", i, err)
		}
	}
	waitLog(t, p, "TLS handshake timed out")
	c.send("a2 LOGOUT\r\n")
	c.expect("* BYE")
}

// splitConn writes its first write in pieces, pausing between them, so the
// proxy sees a TLS record arrive in parts: 3 bytes of the header, then part
// of the record, then the rest.
type splitConn struct {
	net.Conn
	done bool
}

func (c *splitConn) Write(b []byte) (int, error) {
	if c.done || len(b) < 40 {
		return c.Conn.Write(b)
	}
	c.done = true
	n := 0
	for _, cut := range []int{3, 30, len(b)} {
		m, err := c.Conn.Write(b[n:cut])
		n += m
		if err != nil {
			return n, err
		}
		time.Sleep(50 * time.Millisecond) // pacing, not a timed assertion
	}
	return n, nil
}

// A first record that arrives in parts keeps the connection parked until it
// is whole (SO_RCVLOWAT), then the session runs as usual.
func TestParkedRecordInPartsThenLogin(t *testing.T) {
	checkFDs(t)
	p := parkProxy(t, conntable.Config{Max: 64})
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(&splitConn{Conn: raw}, &tls.Config{InsecureSkipVerify: true})
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &client{t: t, conn: tc}
	c.r = bufio.NewReader(tc)
	c.expect("* OK")
	c.send("a1 LOGIN bob secret\r\n")
	c.expect("a1 OK")
	c.send("a2 LOGOUT\r\n")
	c.expect("* BYE")
}

// A parked client that closes, or that is early-dropped from a full table
// for an honest one, goes at once; Shutdown closes the rest.
func TestParkedCloseEarlyDropAndShutdown(t *testing.T) {
	checkFDs(t)
	p := parkProxy(t, conntable.Config{Max: 16})
	cs := silentConns(t, p.addr, 16)
	waitParked(t, p, 16)
	cs[0].Close()
	waitParked(t, p, 15)
	waitCount(t, p, 15)
	more := silentConns(t, p.addr, 1)
	waitParked(t, p, 16) // the table is full again
	c := dial(t, p.addr)
	c.expect("* OK")
	c.send("a1 LOGIN bob secret\r\n")
	c.expect("a1 OK")
	if st := p.srv.Table().Stats(); st.EarlyDropSilent != 1 {
		t.Fatalf("stats %+v, want one silent early drop", st)
	}
	if got := p.srv.ParkedSilent(); got != 15 {
		t.Fatalf("%d parked, want 15", got)
	}
	c.send("a2 LOGOUT\r\n")
	c.expect("* BYE")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got := p.srv.ParkedSilent(); got != 0 {
		t.Fatalf("%d parked after shutdown", got)
	}
	expectClosed(t, append(cs[1:], more...))
	if n := p.srv.Table().Count(); n != 0 {
		t.Fatalf("%d entries after shutdown", n)
	}
}

// stallingConn passes writes through and blocks reads until closed: a TLS
// client over it sends its ClientHello and then waits for ever.
type stallingConn struct {
	net.Conn
	done chan struct{}
}

func (s *stallingConn) Read([]byte) (int, error) { <-s.done; return 0, net.ErrClosed }

// An early drop of a connection that was waiting for a pre-login slot is
// the table's refusal only: it used to be reported as a pre-login limit
// refusal too ("Maximum pre-login connection limit reached" and
// imapgate_refused_total{reason="max_preauth_per_ip"}), at the drop.
func TestEarlyDropOfAWaitingConnectionIsNotAPreauthRefusal(t *testing.T) {
	if !sock.Raw {
		t.Skip("silent connections park only on Linux without imapgate_portable")
	}
	cfg := config.Default()
	cfg.Limits.MaxPreauthPerIP = 1
	lim, err := limiter.New(gateway.Policy(cfg), limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, fakeUpstream(t, simpleServer).upstream(), proxyConfig{limiter: lim, table: conntable.Config{Max: 8}})
	from := func() *net.Dialer { return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 9, 77)}} }
	// The address's one pre-login slot: a client that sent its ClientHello
	// and stalls in the handshake (bytes came: not dropped before the
	// silent ones).
	raw, err := from().Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	stall := &stallingConn{Conn: raw, done: make(chan struct{})}
	t.Cleanup(func() { close(stall.done); raw.Close() })
	go tls.Client(stall, &tls.Config{InsecureSkipVerify: true}).Handshake()
	for i := 0; i < 500 && p.srv.Table().Count() != 1; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	// Seven more from the same address, silent: each waits for the slot.
	for i := 0; i < 7; i++ {
		c, err := from().Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	waitParked(t, p, 7)
	time.Sleep(150 * time.Millisecond) // past the young silent entries' grace
	// The table is full: an honest client from elsewhere takes a waiting
	// connection's place.
	c := dial(t, p.addr)
	c.expect("* OK")
	if st := p.srv.Table().Stats(); st.EarlyDropSilent != 1 {
		t.Fatalf("stats %+v, want one silent early drop", st)
	}
	time.Sleep(50 * time.Millisecond)
	if p.log.Contains("Maximum pre-login connection limit reached") {
		t.Errorf("the early-dropped waiting connection was also logged as a pre-login refusal:\n%s", strings.Join(p.log.Lines(), "\n"))
	}
}
