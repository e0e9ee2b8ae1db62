package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"imapgate/config"
	"imapgate/upstream"
)

// A household with 30 mailboxes on one PC logs them all in at once under
// the default limits, while 30 silent connections from another address are
// cut off by the pre-login limit.
func TestThirtyMailboxesVersusThirtySilentConnections(t *testing.T) {
	g := startGate(t, gateOptions{accounts: accounts(30)})

	// The flood: 30 connections that never log in, from 127.0.3.3.
	var floodOK, floodCut sync.WaitGroup
	var mu sync.Mutex
	greeted, cut := 0, 0
	for i := 0; i < 30; i++ {
		floodOK.Add(1)
		floodCut.Add(1)
		go func() {
			defer floodCut.Done()
			conn, err := dialFrom("127.0.3.3", g.addr)
			if err == nil {
				conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err = bufio.NewReader(conn).ReadString('\n')
			}
			mu.Lock()
			if err == nil {
				greeted++
			} else {
				cut++
			}
			mu.Unlock()
			floodOK.Done()
			if conn != nil {
				io.Copy(io.Discard, conn) // hold it until the proxy cuts it
			}
		}()
	}
	waitFor(t, "10 flood connections greeted", func() bool {
		total, pre := g.limiter.PerIP(netip.MustParseAddr("127.0.3.3"))
		return total == 30 && pre == 10
	})

	// The household: 30 mailboxes, all at once, from 127.0.2.2.
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := 1; i <= 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := login("127.0.2.2", g.addr, fmt.Sprintf("user%02d", i), "pw")
			if err != nil {
				errs <- fmt.Errorf("mailbox %d: %w", i, err)
				return
			}
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				errs <- err
			}
			t.Cleanup(func() { c.Close() })
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The waiting flood connections reach their handshake timeout.
	g.srv.Table().Expire(time.Now().Add(11 * time.Second))
	floodOK.Wait()
	if greeted != 10 || cut != 20 {
		t.Fatalf("flood: %d greeted, %d cut off; want 10 and 20", greeted, cut)
	}
	waitLog(t, g, "Maximum pre-login connection limit reached for ::ffff:127.0.3.3")
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "127.0.2.2") && (strings.Contains(l, "Maximum") || strings.Contains(l, "FAILED")) {
			t.Errorf("the household was refused: %q", l)
		}
	}
}

// One address floods new connections; everyone else keeps working, the
// flood never holds more than its share, and its refused attempts are
// closed before any TLS.
func TestFloodFromOneAddressOthersUnaffected(t *testing.T) {
	cfg := config.Default()
	cfg.Limits.MaxPerIP = 5
	cfg.Limits.Action["max_per_ip"] = "close"
	g := startGate(t, gateOptions{cfg: cfg})

	const attempts = 200 // bounded
	var mu sync.Mutex
	var held []net.Conn
	refused := 0
	var flood sync.WaitGroup
	for w := 0; w < 2; w++ {
		flood.Add(1)
		go func() {
			defer flood.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.9.9")}, Timeout: time.Second}
			for i := 0; i < attempts/2; i++ {
				c, err := d.Dial("tcp", g.addr)
				if errors.Is(err, syscall.ECONNRESET) { // refused: reset before the dial returned
					mu.Lock()
					refused++
					mu.Unlock()
					continue
				}
				if err != nil {
					continue
				}
				// Refused: reset without a byte of TLS. Admitted: the
				// proxy waits for our ClientHello, so the read times out.
				c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				n, err := c.Read(make([]byte, 1))
				var ne net.Error
				mu.Lock()
				if n == 0 && !(errors.As(err, &ne) && ne.Timeout()) {
					refused++
					c.Close()
				} else {
					held = append(held, c)
				}
				mu.Unlock()
			}
		}()
	}
	// Meanwhile, ten other addresses log in fine.
	for i := 1; i <= 10; i++ {
		c, err := login(fmt.Sprintf("127.0.8.%d", i), g.addr, "demo", "demo")
		if err != nil {
			t.Fatalf("honest client %d during the flood: %v", i, err)
		}
		c.Logout().Wait()
		c.Close()
	}
	flood.Wait()
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	if len(held) != 5 || refused != attempts-5 {
		t.Fatalf("flood: %d held, %d refused; want 5 and %d", len(held), refused, attempts-5)
	}
	if total, _ := g.limiter.PerIP(netip.MustParseAddr("127.0.9.9")); total != 5 {
		t.Fatalf("the flooder counts %d connections", total)
	}
	waitLog(t, g, "Maximum connection limit reached for ::ffff:127.0.9.9")
	waitLog(t, g, "Connection rate limit reached for ::ffff:127.0.9.9")
}

// Arbitrary addresses (IPv6, documentation ranges) arrive in PROXY headers
// from a trusted 127.0.0.1; limits and logs use them, not the balancer's.
func TestProxyProtocolFromTrustedBalancer(t *testing.T) {
	cfg := config.Default()
	cfg.Limits.MaxPerIP = 2
	cfg.Limits.MaxPreauthPerIP = 2
	cfg.Limits.Action["max_per_ip"] = "bye"
	g := startGate(t, gateOptions{cfg: cfg, trusted: []string{"127.0.0.1/32"}})

	dialVia := func(src string, version byte) (net.Conn, *bufio.Reader, error) {
		raw, err := net.Dial("tcp", g.addr)
		if err != nil {
			return nil, nil, err
		}
		h := upstream.ProxyHeader(int(version), upstream.Client{
			Remote: netip.MustParseAddrPort(src), Local: netip.MustParseAddrPort("[2001:db8::993]:993"),
		})
		if _, err := h.WriteTo(raw); err != nil {
			return nil, nil, err
		}
		conn := tlsClient(raw)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(conn)
		return conn, r, nil
	}
	for _, src := range []string{"[2001:db8:1::7]:40000", "192.0.2.7:40001"} {
		var conns []net.Conn
		for i, v := range []byte{1, 2, 2} {
			conn, r, err := dialVia(src, v)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			line, err := r.ReadString('\n')
			if i < 2 && !strings.HasPrefix(line, "* OK") {
				t.Fatalf("%s conn %d: %q %v", src, i, line, err)
			}
			if i == 2 && !strings.HasPrefix(line, "* BYE [UNAVAILABLE] Too many connections from your address") {
				t.Fatalf("%s 3rd conn: %q %v", src, line, err)
			}
		}
		for _, c := range conns {
			c.Close()
		}
	}
	waitLog(t, g, "Connection, ip=[2001:db8:1::7], port=[40000]")
	waitLog(t, g, "Maximum connection limit reached for 2001:db8:1::7")
	waitLog(t, g, "Maximum connection limit reached for ::ffff:192.0.2.7")
	// The balancer itself, without a header, is served as itself.
	c, err := login("", g.addr, "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// An untrusted source's PROXY header is not believed.
	raw, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}).Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	upstream.ProxyHeader(1, upstream.Client{Remote: netip.MustParseAddrPort("192.0.2.99:1"), Local: netip.MustParseAddrPort("192.0.2.1:993")}).WriteTo(raw)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, raw)
	if g.log.Contains("192.0.2.99") {
		t.Fatal("a header from an untrusted source was honoured")
	}
}

// The PROXY header imapgate sends upstream, byte for byte.
func TestUpstreamProxyHeaderBytes(t *testing.T) {
	for _, tt := range []struct {
		version int
		client  string
		want    string
	}{
		{1, "192.0.2.7:40000", "PROXY TCP4 192.0.2.7 198.51.100.1 40000 993\r\n"},
		{1, "[2001:db8::7]:40000", "PROXY TCP6 2001:db8::7 ::ffff:198.51.100.1 40000 993\r\n"},
		{2, "192.0.2.7:40000", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\xc6\x33\x64\x01\x9c\x40\x03\xe1"},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			b := make([]byte, len(tt.want))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.ReadFull(c, b)
			got <- string(b)
		}()
		up := &upstream.TCP{Address: ln.Addr().String(), ProxyHeader: tt.version}
		c, err := up.Dial(ctxTimeout(t, 5*time.Second), upstream.Client{
			Remote: netip.MustParseAddrPort(tt.client), Local: netip.MustParseAddrPort("198.51.100.1:993")})
		if err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != tt.want {
			t.Errorf("v%d %s: sent %q, want %q", tt.version, tt.client, g, tt.want)
		}
		c.Close()
		ln.Close()
	}
	var _ = proxyproto.LOCAL
}
