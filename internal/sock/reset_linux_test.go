//go:build linux && !imapgate_portable

package sock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"imapgate/internal/netnstest"
)

// A connection the acceptor refuses is reset, not closed: its client reads
// ECONNRESET, and conntrack on the path puts the entry in CLOSE (10 s by
// default) at once, where a connection closed with FIN waits in TIME_WAIT
// (120 s). A refused flood then holds a twelfth of the host's entries.
func TestRealNftablesRefusedConnectionLeavesConntrackAtOnce(t *testing.T) {
	if !netnstest.Enter(t, netnstest.Options{}) {
		return
	}
	peer := netnstest.NewPeer(t, 2)
	refused, kept := peer.Sources[0], peer.Sources[1]
	netnstest.TrackConnections(t)
	ln, acc := listenAcceptor(t, netip.AddrPortFrom(peer.LocalAddr, 0).String())
	go func() {
		for {
			fd, err := acc.AcceptFD(func(remote netip.AddrPort) bool { return remote.Addr() == kept })
			if err != nil {
				return
			}
			CloseFD(fd) // the control: an ordinary close, FIN first
		}
	}()
	addr := ln.Addr().String()
	const n = 10
	for i := 0; i < n; i++ {
		for _, src := range []netip.Addr{refused, kept} {
			c, err := peer.Dial(src, addr, 5*time.Second)
			if err == nil { // a reset may come before the dial returns
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			if src == refused && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("refused connection: read %v, want a reset", err)
			}
			if src == kept && err != io.EOF {
				t.Fatalf("closed connection: read %v, want EOF", err)
			}
		}
	}
	port := netip.MustParseAddrPort(addr).Port()
	deadline := time.Now().Add(5 * time.Second)
	for {
		states := netnstest.TCPStates(t, port)
		if states[refused]["CLOSE"] == n && states[kept]["TIME_WAIT"] == n {
			if states[kept]["CLOSE"] != 0 || len(states[refused]) != 1 {
				t.Fatalf("conntrack states %v", states)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("conntrack states %v; want %d refused in CLOSE, %d closed in TIME_WAIT", states, n, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The listener's linger 0, which makes a refusal's close a reset, is not
// the kept connections': what the proxy writes last reaches the client,
// then an EOF, where a reset would have discarded it.
func TestAcceptorKeptConnectionEndsWithFIN(t *testing.T) {
	ln, acc := listenAcceptor(t, "127.0.0.1:0")
	for _, viaFD := range []bool{false, true} {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		keep := func(netip.AddrPort) bool { return true }
		var c net.Conn
		if viaFD {
			fd, err := acc.AcceptFD(keep)
			if err != nil {
				t.Fatal(err)
			}
			if c, err = ConnFD(fd); err != nil {
				t.Fatal(err)
			}
		} else if c, _, err = acc.Accept(keep); err != nil {
			t.Fatal(err)
		}
		last := bytes.Repeat([]byte("* BYE\r\n"), 20000) // more than the socket sends at once
		go func() {
			c.Write(last)
			c.Close()
		}()
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, last) {
			t.Fatalf("AcceptFD %v: read %d of %d bytes, %v; want all, then EOF", viaFD, len(got), len(last), err)
		}
	}
}
