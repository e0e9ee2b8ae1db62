package sock

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The acceptor closes what admit refuses, at once, and hands over what it
// keeps with the addresses the client used, on every platform.
func TestAcceptorRefusesAndKeeps(t *testing.T) {
	ln, acc := listenAcceptor(t, ":0") // wildcard: the local address is the one reached
	port := AddrPort(ln.Addr()).Port()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	refused, kept := dial(), dial()
	var seen []netip.AddrPort
	c, local, err := acc.Accept(func(remote netip.AddrPort) bool {
		seen = append(seen, remote)
		return len(seen) == 2
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(seen) != 2 || seen[0] != AddrPort(refused.LocalAddr()) || seen[1] != AddrPort(kept.LocalAddr()) {
		t.Fatalf("admit saw %v; want %v then %v", seen, refused.LocalAddr(), kept.LocalAddr())
	}
	if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port); local != want || AddrPort(c.LocalAddr()) != want {
		t.Fatalf("local %v (conn %v), want %v", local, c.LocalAddr(), want)
	}
	refused.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := refused.Read(make([]byte, 1)); err == nil {
		t.Fatal("the refused connection was not closed")
	}
	kept.Write([]byte("hi"))
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("kept conn read %q, %v", buf, err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("kept conn is a %T, want *net.TCPConn", c)
	}
}

// Readable waits for data without reading it, within the read deadline;
// where there is no raw path it is nil and the caller reads with a buffer.
func TestReadable(t *testing.T) {
	a, b := tcpPair(t)
	wait := Readable(a)
	if !Raw {
		if wait != nil {
			t.Fatal("Readable without the raw path")
		}
		return
	}
	a.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if err := wait(); err == nil {
		t.Fatal("wait returned with nothing to read")
	}
	a.SetReadDeadline(time.Time{})
	b.Write([]byte("x"))
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if n, err := a.Read(buf); n != 1 || buf[0] != 'x' || err != nil {
		t.Fatalf("the byte waited for was consumed: %d %q %v", n, buf, err)
	}
	if FD(a) < 0 {
		t.Fatal("no descriptor for a plain TCP conn")
	}
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// listenAcceptor listens on addr and makes its Acceptor; both are closed
// at the test's end.
func listenAcceptor(t *testing.T, addr string) (net.Listener, *Acceptor) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acc, err := NewAcceptor(ln.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acc.Close() })
	return ln, acc
}
