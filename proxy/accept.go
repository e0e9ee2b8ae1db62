package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"imapgate/limiter"
)

// serveRaw is Serve's loop for a plain TCP listener with a limiter: it
// accepts through the listener's RawConn, so the new socket is a bare
// descriptor with its peer address. A connection refused before TLS is
// closed at once: it is never registered with Go's poller and costs no
// goroutine, as in HAProxy's tcp-request connection reject. An admitted one
// becomes a net.Conn and goes to its own goroutine.
func (s *Server) serveRaw(ln *net.TCPListener) error {
	// A listener's own RawConn cannot wait for readability (Go returns
	// EINVAL), but a non-blocking os.File on a duplicate of its descriptor
	// can; closeListeners closes the duplicate along with the listener.
	f, err := dupNonblocking(ln)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		f.Close()
		return ErrServerClosed
	}
	s.rawFiles = append(s.rawFiles, f)
	s.mu.Unlock()
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	local := addrPortOf(ln.Addr())
	var (
		nfd     int
		aerr    error
		pending *admission // the admitted connection being handed over
	)
	// accept takes every pending connection in one wake-up of the poller,
	// refusing right here; it returns at the first connection to hand over
	// (or an error) for the loop below, and waits on the poller at EAGAIN.
	accept := func(fd uintptr) bool {
		for {
			var sa syscall.Sockaddr
			nfd, sa, aerr = syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			if aerr == syscall.EAGAIN || aerr == syscall.EINTR {
				return false
			}
			if aerr != nil {
				return true
			}
			if pending = s.admitRaw(nfd, local, sa); pending != nil {
				return true
			}
		}
	}
	var backoff time.Duration
	for {
		if err := rc.Read(accept); err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			return fmt.Errorf("accept: %w", err)
		}
		if aerr != nil {
			if s.closing() {
				return ErrServerClosed
			}
			if errors.Is(aerr, syscall.ECONNABORTED) {
				continue
			}
			s.acceptBackoff(aerr, &backoff)
			continue
		}
		backoff = 0
		a := pending
		f := os.NewFile(uintptr(nfd), "client")
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			a.ticket.Release()
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			// The local address the client reached, not the listener's
			// wildcard.
			a.client.Local = addrPortOf(tc.LocalAddr())
		}
		s.sessions.Add(1)
		go s.serveConn(conn, a)
	}
}

// admitRaw decides on a freshly accepted descriptor. A refusal before TLS
// closes it and returns nil; otherwise it returns the admission to hand
// over with the connection.
func (s *Server) admitRaw(nfd int, local netip.AddrPort, sa syscall.Sockaddr) *admission {
	remote := sockaddrAddrPort(sa)
	a := &admission{client: Client{Remote: remote, Local: local}}
	s.events.Accepted()
	a.ticket, a.decision = s.limiter.Admit(remote.Addr(), time.Now())
	if d := a.decision; d.Refused && d.Action != limiter.Bye && d.WouldRefuse == 0 {
		syscall.Close(nfd)
		s.refusedBeforeTLS(d, remote.Addr())
		return nil
	}
	return a
}

func sockaddrAddrPort(sa syscall.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func dupNonblocking(ln *net.TCPListener) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) {
		if dup, derr = syscall.Dup(int(fd)); derr == nil {
			syscall.CloseOnExec(dup)
			derr = syscall.SetNonblock(dup, true)
		}
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("listener: %w", derr)
	}
	return os.NewFile(uintptr(dup), "listener"), nil
}
