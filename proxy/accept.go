package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

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
	wildcard := local.Addr().IsUnspecified()
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
			var remote netip.AddrPort
			nfd, remote, aerr = accept4Raw(int(fd))
			if aerr == syscall.EAGAIN || aerr == syscall.EINTR {
				return false
			}
			if aerr != nil {
				return true
			}
			if pending = s.admitRaw(nfd, local, remote); pending != nil {
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
		if wildcard {
			// The address the client reached, not the listener's.
			a.client.Local = localAddrRaw(nfd, local)
		}
		conn, err := newAcceptedConn(nfd, a.client.Local, a.client.Remote)
		if err != nil {
			a.ticket.Release()
			continue
		}
		if !s.startSession() {
			conn.Close()
			a.ticket.Release()
			return ErrServerClosed
		}
		go s.serveConn(conn, a)
	}
}

// admitRaw decides on a freshly accepted descriptor. A refusal before TLS
// closes it and returns nil; otherwise it returns the admission to hand
// over with the connection.
func (s *Server) admitRaw(nfd int, local, remote netip.AddrPort) *admission {
	a := &admission{client: Client{Remote: remote, Local: local}}
	s.events.Accepted()
	a.ticket, a.decision = s.limiter.Admit(remote.Addr(), time.Now())
	if d := a.decision; d.Refused && d.Action != limiter.Bye && d.WouldRefuse == 0 {
		closeRaw(nfd)
		s.refusedBeforeTLS(d, remote.Addr())
		return nil
	}
	return a
}

// accept4Raw and closeRaw make their system calls without telling the Go
// scheduler (RawSyscall). Both return at once on a non-blocking listener
// and a socket without SO_LINGER, and the scheduler's bookkeeping costs
// more than the call: entering a system call from an idle process wakes
// the runtime's monitor thread, which then polls a few times before it
// sleeps again. In a flood that was a futex wake, a futex wait and a
// nanosleep per refused connection, about a third of imapgate's CPU per
// refusal.
func accept4Raw(lfd int) (int, netip.AddrPort, error) {
	var rsa syscall.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	nfd, _, errno := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(lfd),
		uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)),
		syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return int(nfd), rawSockaddrAddrPort(&rsa), nil
}

// localAddrRaw returns the socket's local address (getsockname), or
// fallback if that fails.
func localAddrRaw(fd int, fallback netip.AddrPort) netip.AddrPort {
	var rsa syscall.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	_, _, errno := syscall.RawSyscall(syscall.SYS_GETSOCKNAME, uintptr(fd),
		uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return fallback
	}
	return rawSockaddrAddrPort(&rsa)
}

func closeRaw(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawSockaddrAddrPort(rsa *syscall.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// ntohs reads a port as the kernel stores it, in network byte order.
func ntohs(port uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&port))
	return uint16(b[0])<<8 | uint16(b[1])
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
