package cluster

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"imapgate/certs"
)

// fakeServer accepts on loopback and hands each connection to serve.
func fakeServer(t *testing.T, ln net.Listener, serve func(net.Conn)) string {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func testProber(t *testing.T, url string) *prober {
	t.Helper()
	o := Options{URL: url, Node: "t"}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	copt, err := clientOption(o)
	if err != nil {
		t.Fatal(err)
	}
	return &prober{o: o, copt: copt, k: newKeys("imapgate"), user: "default", unix: strings.HasPrefix(url, "unix:")}
}

// transport tells a scheme that does not match the server (an error of
// the configuration) from a server that answers as the scheme says, or
// not at all (left to the client, or a warning), within its own wait.
func TestTransport(t *testing.T) {
	silent := fakeServer(t, listen(t), func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	resp := fakeServer(t, listen(t), func(c net.Conn) { c.Read(make([]byte, 64)); c.Write([]byte("-NOAUTH Authentication required.\r\n")) })
	cert, err := certs.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tlsOnly := fakeServer(t, tls.NewListener(listen(t), &tls.Config{Certificates: []tls.Certificate{*cert}}),
		func(c net.Conn) { c.(*tls.Conn).Handshake() })
	refused := listen(t)
	closed := refused.Addr().String()
	refused.Close()
	for _, tt := range []struct {
		name, url string
		kind      ProbeKind // 0: no error
		want      string
	}{
		{"rediss to a plain server", "rediss://" + silent, ProbeConfig,
			"accepts TCP but never answered the TLS handshake (within 500ms): is it a plain Redis? use redis://"},
		{"redis to a TLS port", "redis://" + tlsOnly, ProbeConfig,
			"reset the connection on a plain request and answers a TLS handshake: it wants TLS; use rediss://"},
		{"rediss to a TLS port, unverified", "rediss://" + tlsOnly, ProbeConfig, "its certificate does not verify"},
		{"redis to a RESP server", "redis://" + resp, 0, ""},
		{"redis to a silent server", "redis://" + silent, 0, ""},
		{"nothing listens", "redis://" + closed, ProbeUnreachable, "did not answer (connecting: dial tcp " + closed + ": connect: connection refused)"},
		{"nothing listens at the first of two", "redis://" + closed + "?addr=" + resp, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := testProber(t, tt.url).transport(context.Background())
			took := time.Since(start)
			pe, _ := err.(*ProbeError)
			switch {
			case tt.kind == 0 && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.kind != 0 && (pe == nil || pe.Kind != tt.kind || !strings.Contains(pe.Error(), tt.want)):
				t.Errorf("error %v, want kind %d with %q", err, tt.kind, tt.want)
			}
			if took > time.Second {
				t.Errorf("took %s, want at most the 500 ms of the wait (and its dial)", took)
			}
		})
	}
}
