package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"imapgate/config"
	"imapgate/gateway"
	"imapgate/limiter"
)

// BenchmarkRefusedBeforeTLS versus BenchmarkTLSHandshakeAndGreeting: what a
// refused connection costs the proxy compared with one it serves as far as
// the greeting. Each op is a whole loopback connection, client side
// included. Run: go test -run XXX -bench 'Refused|Handshake' -benchmem ./proxy/
func BenchmarkRefusedBeforeTLS(b *testing.B) {
	p := gateway.Policy(config.Default())
	p.Deny = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	l, _ := limiter.New(p, limiter.Options{})
	up := fakeUpstream(b, simpleServer)
	px := startProxy(b, up.upstream(), proxyConfig{limiter: l})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", px.addr)
		if errors.Is(err, syscall.ECONNRESET) {
			continue // refused: reset before the dial returned
		}
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

// BenchmarkRelayFetch1MiB is the relay loop in a logged-in session: each op
// is a FETCH whose 1 MiB literal the upstream streams, the proxy encrypts
// and the client reads (client, proxy and upstream all in this process;
// B/op and allocs/op are theirs together). Run:
// go test -run XXX -bench RelayFetch -benchmem ./proxy/
func BenchmarkRelayFetch1MiB(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 1<<20/64)
	up := fakeUpstream(b, func(u *upstreamConn) {
		u.c.SetDeadline(time.Time{})
		u.send(courierGreeting)
		for {
			// Not u.read: its log of lines would fill up over b.N FETCHes.
			l, err := u.r.ReadString('\n')
			if err != nil {
				return
			}
			tag, rest, _ := strings.Cut(l, " ")
			switch {
			case strings.HasPrefix(rest, "LOGIN"):
				u.send(tag + " OK LOGIN Ok.\r\n")
			case strings.HasPrefix(rest, "FETCH"):
				u.send(fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n", len(body)))
				u.c.Write(body)
				u.send(")\r\n" + tag + " OK FETCH completed.\r\n")
			default:
				u.send(tag + " OK done\r\n")
			}
		}
	})
	px := startProxy(b, up.upstream(), proxyConfig{})
	c, err := tls.Dial("tcp", px.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	readLine := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	readLine() // greeting
	io.WriteString(c, "a LOGIN bob secret\r\n")
	if l := readLine(); !strings.HasPrefix(l, "a OK") {
		b.Fatalf("LOGIN: %q", l)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		io.WriteString(c, "f FETCH 1 BODY[]\r\n")
		readLine()
		if n, err := io.CopyN(io.Discard, r, int64(len(body))); err != nil || n != int64(len(body)) {
			b.Fatalf("literal: %d bytes, %v", n, err)
		}
		readLine()
		if l := readLine(); !strings.HasPrefix(l, "f OK") {
			b.Fatalf("FETCH: %q", l)
		}
	}
}

// BenchmarkKeyExchange is what crypto/tls spends on the server's side of an
// ECDHE key exchange (key generation and shared secret), per group: the
// largest single part of a full handshake's CPU (see the README's
// Performance section). Run: go test -run XXX -bench KeyExchange ./proxy/
func BenchmarkKeyExchange(b *testing.B) {
	for _, c := range []struct {
		name  string
		curve ecdh.Curve
	}{{"X25519", ecdh.X25519()}, {"P256", ecdh.P256()}} {
		b.Run(c.name, func(b *testing.B) {
			peer, err := c.curve.GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				k, err := c.curve.GenerateKey(rand.Reader)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := k.ECDH(peer.PublicKey()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
