//go:build linux && !imapgate_portable && !imapgate_tcpconn

package sock

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// sockPair returns a Conn and the plain TCP connection at its other
// end: accepted (owned through an *os.File, as serveRaw makes them) or, with
// dialled, wrapping a *net.TCPConn (as the upstream's are).
func sockPair(t *testing.T, dialled bool) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var sc *Conn
	if dialled {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		dc, err := Dialed(c.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		sc = dc.(*Conn)
	} else {
		// As serveRaw does: a listener's own RawConn cannot wait.
		lf, err := dupNonblocking(ln.(*net.TCPListener))
		if err != nil {
			t.Fatal(err)
		}
		defer lf.Close()
		rc, _ := lf.SyscallConn()
		var nfd int
		var remote netip.AddrPort
		aerr := errors.New("accept callback never ran")
		if err := rc.Read(func(fd uintptr) bool {
			nfd, remote, aerr = accept4Raw(int(fd))
			return aerr != syscall.EAGAIN
		}); err != nil {
			t.Fatal(err)
		}
		if aerr != nil {
			t.Fatal(aerr)
		}
		if remote != AddrPort(peer.LocalAddr()) {
			t.Fatalf("accept4Raw peer %v, want %v", remote, peer.LocalAddr())
		}
		local := localAddrRaw(nfd, netip.AddrPort{})
		if local != AddrPort(ln.Addr()) {
			t.Fatalf("localAddrRaw = %v, want %v", local, ln.Addr())
		}
		ac, err := newAcceptedConn(nfd, local, remote)
		if err != nil {
			t.Fatal(err)
		}
		sc = ac.(*Conn)
	}
	t.Cleanup(func() { sc.Close(); peer.Close() })
	return sc, peer
}

// bothOwners runs f for an accepted and a dialled Conn.
func bothOwners(t *testing.T, f func(t *testing.T, sc *Conn, peer net.Conn)) {
	for _, dialled := range []bool{false, true} {
		name := "accepted"
		if dialled {
			name = "dialled"
		}
		t.Run(name, func(t *testing.T) {
			sc, peer := sockPair(t, dialled)
			f(t, sc, peer)
		})
	}
}

func TestSockConnReadWriteEOF(t *testing.T) { bothOwners(t, testReadWriteEOF) }

func testReadWriteEOF(t *testing.T, sc *Conn, peer net.Conn) {
	// Larger than the socket buffers, so Write must wait for the reader.
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	if n, err := sc.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	if err := sc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	b := <-got
	if len(b) != len(big) || string(b[:1000]) != string(big[:1000]) || string(b[len(b)-1000:]) != string(big[len(big)-1000:]) {
		t.Fatalf("peer read %d bytes, not the %d written", len(b), len(big))
	}

	peer.Write([]byte("hello"))
	peer.(*net.TCPConn).CloseWrite()
	buf := make([]byte, 16)
	n, err := io.ReadFull(sc, buf[:5])
	if n != 5 || err != nil || string(buf[:5]) != "hello" {
		t.Fatalf("Read = %d %q, %v", n, buf[:n], err)
	}
	if n, err := sc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read at end = %d, %v; want 0, io.EOF", n, err)
	}
}

// A read deadline must surface as a net.Error timeout that crypto/tls
// treats as temporary, and the connection must still work after it: the
// relay's idle detector relies on both.
func TestSockConnDeadlineIsTemporaryTimeout(t *testing.T) { bothOwners(t, testDeadline) }

func testDeadline(t *testing.T, sc *Conn, peer net.Conn) {
	sc.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	_, err := sc.Read(make([]byte, 4))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past deadline = %v; want a net.Error timeout", err)
	}
	if tmp, ok := err.(interface{ Temporary() bool }); !ok || !tmp.Temporary() {
		t.Fatalf("timeout %v is not temporary", err)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("timeout %v is not os.ErrDeadlineExceeded", err)
	}
	sc.SetReadDeadline(time.Time{})
	peer.Write([]byte("x"))
	if n, err := sc.Read(make([]byte, 4)); n != 1 || err != nil {
		t.Fatalf("Read after the timeout = %d, %v", n, err)
	}
}

func TestSockConnClosedAndReset(t *testing.T) { bothOwners(t, testClosedAndReset) }

func testClosedAndReset(t *testing.T, sc *Conn, peer net.Conn) {
	// A reset from the peer is an error naming ECONNRESET or EPIPE.
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	time.Sleep(20 * time.Millisecond)
	var err error
	for i := 0; i < 3 && err == nil; i++ {
		_, err = sc.Write([]byte("after reset"))
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write to a reset peer = %v; want ECONNRESET or EPIPE", err)
	}
	sc.Close()
	if _, err := sc.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close = %v; want net.ErrClosed", err)
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v; want net.ErrClosed", err)
	}
}

func TestSockConnOptions(t *testing.T) { bothOwners(t, testOptions) }

var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Minute, Interval: 30 * time.Second, Count: 4}

func testOptions(t *testing.T, sc *Conn, _ net.Conn) {
	if err := sc.SetKeepAliveConfig(keepAlive); err != nil {
		t.Fatal(err)
	}
	want := map[[2]int]int{
		{syscall.IPPROTO_TCP, syscall.TCP_NODELAY}:   1,
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE}:   1,
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE}:  int(keepAlive.Idle.Seconds()),
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL}: int(keepAlive.Interval.Seconds()),
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT}:   keepAlive.Count,
	}
	rc, _ := sc.SyscallConn()
	for opt, v := range want {
		var got int
		var err error
		rc.Control(func(fd uintptr) { got, err = syscall.GetsockoptInt(int(fd), opt[0], opt[1]) })
		if err != nil || got != v {
			t.Errorf("option %v = %d, %v; want %d", opt, got, err, v)
		}
	}
}

// On a wildcard listener the local address is the one the client reached.
func TestLocalAddrOnWildcardListener(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := AddrPort(ln.Addr()).Port()
	peer, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := c.(*net.TCPConn).SyscallConn()
	var got netip.AddrPort
	rc.Control(func(fd uintptr) { got = localAddrRaw(int(fd), netip.AddrPort{}) })
	if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port); got != want {
		t.Fatalf("localAddrRaw = %v, want %v", got, want)
	}
}
