// Package upstream is the seam to the IMAP server behind imapgate: a
// Dialer returns a connection on which the server's greeting comes next.
// TCP dials a server (optionally announcing the client with a PROXY header,
// optionally over TLS); Exec starts courier's login program per session.
// The caller owns the conn a Dialer returns and closes it.
package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/pires/go-proxyproto/tlvparse"
	"imapgate/internal/sock"
)

// Client identifies the client a session is for, as the proxy saw it
// (after any PROXY header from a trusted load balancer).
type Client struct {
	Remote netip.AddrPort
	Local  netip.AddrPort
	// The client's TLS session, once its handshake is done (zero before):
	// what a PROXY v2 header's SSL TLV reports to the upstream.
	TLSVersion  uint16 // tls.VersionTLS12, tls.VersionTLS13
	CipherSuite uint16
	ServerName  string // SNI, if the client sent one
}

// Dialer is the seam to the IMAP server. Dial returns a connection on
// which the server's greeting comes next; the caller owns it and closes
// it. String names the upstream in log lines.
type Dialer interface {
	Dial(ctx context.Context, c Client) (net.Conn, error)
	String() string
}

// TCP dials an IMAP server over TCP, optionally with TLS, and can
// announce the client with a PROXY header.
type TCP struct {
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

func (u *TCP) String() string { return u.Address }

// Dial implements Dialer.
func (u *TCP) Dial(ctx context.Context, c Client) (net.Conn, error) {
	timeout := u.ConnectTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Keepalive is set below, and not at all on loopback, where the kernel
	// resets a dead peer's connection.
	d := net.Dialer{KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", u.Address)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", u.Address, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok && !sock.AddrPort(tc.RemoteAddr()).Addr().IsLoopback() {
		tc.SetKeepAliveConfig(sock.KeepAlive)
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

// ProxyHeader builds the PROXY header (version 1 or 2) announcing c. A
// version 2 header for a TLS client carries what HAProxy's
// send-proxy-v2-ssl sends: PP2_TYPE_SSL (client flag PP2_CLIENT_SSL,
// verify 0 as HAProxy writes it when no client certificate was asked for,
// the TLS version as OpenSSL names it and the cipher suite) and
// PP2_TYPE_AUTHORITY (the SNI, if any). Dovecot trusts a client announced
// with PP2_CLIENT_SSL as secured and then allows plaintext LOGIN under its
// default disable_plaintext_auth = yes; without it, every login through a
// haproxy listener gets NO [PRIVACYREQUIRED].
func ProxyHeader(version int, c Client) *proxyproto.Header {
	src := net.TCPAddrFromAddrPort(c.Remote)
	dst := net.TCPAddrFromAddrPort(c.Local)
	h := proxyproto.HeaderProxyFromAddrs(byte(version), src, dst)
	if version == 2 && c.TLSVersion != 0 {
		// SetTLVs fails only for a value over 64 KiB; an SNI is at most 255 bytes.
		h.SetTLVs(clientTLVs(c))
	}
	return h
}

func clientTLVs(c Client) []proxyproto.TLV {
	sub := []proxyproto.TLV{{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte(tlsVersionName(c.TLSVersion))}}
	if c.CipherSuite != 0 {
		sub = append(sub, proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CIPHER, Value: []byte(tls.CipherSuiteName(c.CipherSuite))})
	}
	ssl, err := tlvparse.PP2SSL{Client: tlvparse.PP2_BITFIELD_CLIENT_SSL, Verify: 0, TLV: sub}.Marshal()
	if err != nil {
		return nil
	}
	tlvs := []proxyproto.TLV{ssl}
	if c.ServerName != "" && len(c.ServerName) <= 255 {
		tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(c.ServerName)})
	}
	return tlvs
}

// tlsVersionName names a TLS version as OpenSSL's SSL_get_version does,
// which is what HAProxy puts in PP2_SUBTYPE_SSL_VERSION.
func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("unknown (0x%04x)", v)
}
