// Package sock is imapgate's platform seam for sockets: the few places
// where the proxy goes below the net package (see doc/architecture.md,
// "System calls on the hot path"). On Linux, refused connections are
// closed with raw accept4 and close before Go's poller ever sees them, a
// quiet upstream is awaited without a buffer (a raw MSG_PEEK), and idle
// relay directions wait in an epoll Poller without a goroutine. Elsewhere
// (and on Linux built with the tag imapgate_portable) the same functions
// fall back on net.Listener.Accept, and there is no Poller: every idle
// direction keeps a blocked goroutine. Sessions' sockets are
// *net.TCPConns everywhere. Nothing outside this package imports syscall
// or unsafe for sockets.
package sock

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// AddrPort returns a's address and port, IPv4-mapped addresses unmapped.
func AddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// temporary marks an accept error the server survives (out of descriptors
// and the like): it backs off and accepts again.
type temporary struct{ error }

func (temporary) Temporary() bool { return true }
func (e temporary) Unwrap() error { return e.error }

// KeepAlive finds dead peers of idle sessions (IDLE can be silent for 29
// minutes) long before the established timeout. The proxy turns it on for
// a client once it is admitted, and for a dialled upstream off loopback.
var KeepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Minute, Interval: 30 * time.Second, Count: 4}

// Listen listens on addr ("host:port") with plain TCP, as courier, Dovecot
// and HAProxy listen, and without keepalive on accepted connections (the
// proxy turns it on for admitted clients, so a refused connection costs no
// setsockopt). Go listens with MPTCP by default since 1.24, and then every
// connection, a plain client's included, goes through MPTCP's fallback in
// the kernel: imapbench's session scenario measured 3 and 7 % less CPU
// per session with plain TCP (2026-11-30).
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}
