package proxy_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"testing"

	"imapgate/limiter"
)

// BenchmarkRefusedBeforeTLS versus BenchmarkTLSHandshakeAndGreeting: what a
// refused connection costs the proxy compared with one it serves as far as
// the greeting. Each op is a whole loopback connection, client side
// included. Run: go test -run XXX -bench 'Refused|Handshake' -benchmem ./proxy/
func BenchmarkRefusedBeforeTLS(b *testing.B) {
	p := limiter.DefaultPolicy()
	p.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	l, _ := limiter.New(p, limiter.Options{})
	up := fakeUpstream(b, simpleServer)
	px := startProxy(b, up.upstream(), proxyConfig{limiter: l})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", px.addr)
		if err != nil {
			b.Fatal(err)
		}
		if n, _ := c.Read(make([]byte, 1)); n != 0 {
			b.Fatal("refused connection got data")
		}
		c.Close()
	}
}

func BenchmarkTLSHandshakeAndGreeting(b *testing.B) {
	up := fakeUpstream(b, simpleServer)
	px := startProxy(b, up.upstream(), proxyConfig{})
	cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: nil}
	buf := make([]byte, 512)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := tls.Dial("tcp", px.addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil && err != io.EOF {
			b.Fatal(err)
		}
		c.Close()
	}
}
