package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Client identifies the client a session is for, as the proxy saw it
// (after any PROXY header from a trusted load balancer).
type Client struct {
	Remote netip.AddrPort
	Local  netip.AddrPort
}

// Upstream is the seam to the IMAP server. Dial returns a connection on
// which the server's greeting comes next. The session owns the returned
// conn and closes it.
type Upstream interface {
	Dial(ctx context.Context, c Client) (net.Conn, error)
	String() string
}

// TCPUpstream dials an IMAP server over TCP, optionally with TLS, and can
// announce the client with a PROXY header.
type TCPUpstream struct {
	Address        string
	ConnectTimeout time.Duration // 0 means 5 s
	// TLS, if non-nil, wraps the connection (after any PROXY header).
	TLS *tls.Config
	// ProxyHeader is 0 (none), 1 (v1 text, what courier >= 5.2.7 -haproxy
	// reads) or 2 (v2 binary, Dovecot and HAProxy). It is written in one
	// write immediately after connect: couriertcpd accepts no other
	// connection until the header has arrived.
	ProxyHeader int
}

func (u *TCPUpstream) String() string { return u.Address }

// Dial implements Upstream.
func (u *TCPUpstream) Dial(ctx context.Context, c Client) (net.Conn, error) {
	timeout := u.ConnectTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Keepalive is set below, raw, and not at all on loopback, where the
	// kernel resets a dead peer's connection.
	d := net.Dialer{KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", u.Address)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", u.Address, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		sc, err := newSockConn(tc)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("connect %s: %w", u.Address, err)
		}
		if !sc.remote.Addr().IsLoopback() {
			sc.SetKeepAliveConfig(keepAlive)
		}
		conn = sc
	}
	if u.ProxyHeader != 0 {
		if _, err := ProxyHeader(u.ProxyHeader, c).WriteTo(conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("send PROXY header to %s: %w", u.Address, err)
		}
	}
	if u.TLS == nil {
		return conn, nil
	}
	tc := tls.Client(conn, u.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", u.Address, err)
	}
	return tc, nil
}

// ProxyHeader builds the PROXY header (version 1 or 2) announcing c.
func ProxyHeader(version int, c Client) *proxyproto.Header {
	src := net.TCPAddrFromAddrPort(c.Remote)
	dst := net.TCPAddrFromAddrPort(c.Local)
	return proxyproto.HeaderProxyFromAddrs(byte(version), src, dst)
}
