package cluster

// Probe's look at the transport, before its client connects: a scheme
// that does not match the server (rediss:// to a plain Redis, redis:// to
// a TLS port) would reach the client as a timeout or a reset connection,
// which read as a Redis that does not answer (a warning), while a
// replica so configured stays on local limits for good.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// transportWait bounds the probe's own TLS handshake and its plain PING
// (less if the client's dial timeout is shorter): a plain Redis sent a
// TLS ClientHello waits for the rest of a command line and never
// answers, and the client would spend its whole dial timeout on it (up
// to 10 s).
const transportWait = 2 * time.Second

// transport dials the first address as the client would and checks that
// the server speaks what the URL's scheme says: with rediss://, a TLS
// handshake (the client's TLS settings, so a certificate that does not
// verify shows here too); otherwise a PING in plain RESP. Only a
// mismatch it can show is an error of its own (ProbeConfig); a server
// that does not accept the connection is left to the client when other
// addresses follow (it tries them), and reported here when there are
// none.
func (p *prober) transport(ctx context.Context) error {
	addr := p.copt.InitAddress[0]
	s := p.at(addr)
	network := "tcp"
	if p.unix {
		network = "unix"
	}
	d := net.Dialer{Timeout: p.copt.Dialer.Timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if kindOf(err) != ProbeUnreachable || len(p.copt.InitAddress) == 1 {
			return p.describe(s, "connecting", err)
		}
		return nil
	}
	defer conn.Close()
	wait := min(p.copt.Dialer.Timeout, transportWait)
	conn.SetDeadline(time.Now().Add(wait))
	if p.copt.TLSConfig != nil {
		return p.handshake(s, conn, wait)
	}
	return p.plain(ctx, s, conn, addr, wait)
}

// at names the server at addr: a sentinel with master_set, else Redis.
func (p *prober) at(addr string) side {
	if p.copt.Sentinel.MasterSet != "" {
		return side{who: "the sentinel at " + addr, creds: "sentinel_username and sentinel_password", sentinel: true}
	}
	return side{who: "Redis at " + addr, creds: "the URL's user and password"}
}

// ping is PING in RESP.
var ping = []byte("*1\r\n$4\r\nPING\r\n")

// handshake runs the client's TLS handshake on conn, then a PING: a
// server that wants a client certificate says so (an alert) only after
// a TLS 1.3 handshake the client sees complete, and then closes, so
// that the client's first command may meet a reset instead.
func (p *prober) handshake(s side, conn net.Conn, wait time.Duration) error {
	tc := tls.Client(conn, p.copt.TLSConfig.Clone())
	err := tc.Handshake()
	if err == nil {
		tc.Write(ping)
		if _, err := io.ReadFull(tc, make([]byte, 1)); isTLSAlert(err) {
			return p.describe(s, "TLS handshake", err)
		}
		return nil
	}
	var header tls.RecordHeaderError
	switch {
	case isTimeout(err):
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s accepts TCP but never answered the TLS handshake "+
			"(within %s): is it a plain Redis? use redis://", s.who, wait)}
	case errors.As(err, &header):
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s answered the TLS handshake with something "+
			"that is not TLS (%s): is it a plain Redis? use redis://", s.who, err)}
	}
	return p.describe(s, "TLS handshake", err)
}

// plain sends a PING in RESP and reads the first byte of the answer. An
// answer (even NOAUTH) is for the client to read; a TLS record, or a
// reset with no answer from a server that then completes a TLS
// handshake, means the server wants TLS. Silence, or a reset from a
// server that does not speak TLS either, is left to the client.
func (p *prober) plain(ctx context.Context, s side, conn net.Conn, addr string, wait time.Duration) error {
	_, err := conn.Write(ping)
	first := make([]byte, 1)
	if err == nil {
		_, err = io.ReadFull(conn, first)
	}
	const use = "use rediss:// (with tls_ca_file if its certificate is from a private CA)"
	switch {
	case err == nil && (first[0] == 0x15 || first[0] == 0x16): // a TLS alert or handshake record
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s answered a plain request with TLS: %s", s.who, use)}
	case err == nil, p.unix, !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF):
		return nil
	case p.speaksTLS(ctx, addr, wait):
		return &ProbeError{Kind: ProbeConfig, msg: fmt.Sprintf("%s reset the connection on a plain request "+
			"and answers a TLS handshake: it wants TLS; %s", s.who, use)}
	}
	return nil
}

// speaksTLS reports whether the server at addr answers a TLS handshake
// (one that completes, or a TLS alert: a server that wants a client
// certificate), not checking its certificate.
func (p *prober) speaksTLS(ctx context.Context, addr string, wait time.Duration) bool {
	d := net.Dialer{Timeout: p.copt.Dialer.Timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(wait))
	err = tls.Client(conn, &tls.Config{InsecureSkipVerify: true}).Handshake()
	return err == nil || isTLSAlert(err)
}

// isTimeout reports a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isTLSAlert reports an alert the TLS peer sent ("remote error: tls: …").
func isTLSAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}
