//go:build linux && !imapgate_portable

package sock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"
)

// Raw says the raw paths are in use: raw accept and the Poller.
const Raw = true

// Acceptor accepts through the listener's RawConn, so a new socket is a
// bare descriptor with its peer address. A connection the caller refuses is
// reset at once (closed with the listener's linger 0, see resetRaw): it is
// never registered with Go's poller and costs no goroutine, as in HAProxy's
// tcp-request connection reject.
type Acceptor struct {
	file *os.File // a non-blocking duplicate of the listener's descriptor
	rc   syscall.RawConn
}

// NewAcceptor prepares raw accepts on ln. Close it along with ln.
func NewAcceptor(ln *net.TCPListener) (*Acceptor, error) {
	// A listener's own RawConn cannot wait for readability (Go returns
	// EINVAL), but a non-blocking os.File on a duplicate of its descriptor
	// can.
	f, err := dupNonblocking(ln)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	// Accepted sockets inherit the listener's SO_LINGER (the kernel clones
	// the listener's socket): with linger 0 there, a refused connection's
	// close is a reset without a setsockopt of its own, and AcceptFD
	// clears it on the connections it keeps.
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &noLinger)
	}); err != nil || lerr != nil {
		f.Close()
		return nil, fmt.Errorf("listener: SO_LINGER: %w", errors.Join(err, lerr))
	}
	return &Acceptor{file: f, rc: rc}, nil
}

// Close ends Accept.
func (a *Acceptor) Close() error { return a.file.Close() }

// Accept returns the next connection admit keeps, with the local address
// the client reached. admit is called with each new connection's remote
// address; a connection it refuses is reset here. Every pending
// connection is taken in one wake-up of Go's poller. An error the caller
// may survive (back off and accept again) has a Temporary method; an
// error after admit kept a connection means that connection is gone.
func (a *Acceptor) Accept(admit func(remote netip.AddrPort) bool) (net.Conn, netip.AddrPort, error) {
	fd, err := a.AcceptFD(admit)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	c, err := ConnFD(fd)
	if err != nil {
		return nil, netip.AddrPort{}, temporary{err}
	}
	return c, AddrPort(c.LocalAddr()), nil // on a wildcard listener, the address the client reached
}

// AcceptFD is Accept without the net.Conn: it returns the kept
// connection's bare non-blocking descriptor, which the caller owns (ConnFD
// makes it a net.Conn, CloseFD closes it). Errors as Accept's.
func (a *Acceptor) AcceptFD(admit func(remote netip.AddrPort) bool) (int, error) {
	for {
		var (
			nfd    int
			remote netip.AddrPort
			aerr   error
		)
		accept := func(fd uintptr) bool {
			for {
				nfd, remote, aerr = accept4Raw(int(fd))
				if aerr == syscall.EAGAIN || aerr == syscall.EINTR {
					return false
				}
				if aerr != nil {
					return true
				}
				if admit(remote) {
					lingerRaw(nfd, &defaultLinger)
					return true
				}
				closeRaw(nfd) // a reset: linger 0, the listener's
			}
		}
		if err := a.rc.Read(accept); err != nil {
			return -1, err
		}
		if errors.Is(aerr, syscall.ECONNABORTED) {
			continue
		}
		if aerr != nil {
			return -1, temporary{fmt.Errorf("accept4: %w", aerr)}
		}
		return nfd, nil
	}
}

// LocalAddrFD returns the address the client of socket fd reached
// (getsockname), IPv4-mapped addresses unmapped; the zero AddrPort if the
// socket is gone.
func LocalAddrFD(fd int) netip.AddrPort {
	var rsa syscall.RawSockaddrAny
	size := uint32(unsafe.Sizeof(rsa))
	_, _, errno := syscall.RawSyscall(syscall.SYS_GETSOCKNAME, uintptr(fd),
		uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return netip.AddrPort{}
	}
	return rawSockaddrAddrPort(&rsa)
}

// CloseFD closes a socket AcceptFD returned, without the scheduler.
func CloseFD(fd int) { closeRaw(fd) }

// ResetFD closes a socket AcceptFD returned with a reset (see resetRaw).
func ResetFD(fd int) { resetRaw(fd) }

// accept4Raw and closeRaw make their system calls without telling the Go
// scheduler (RawSyscall). Both return at once on a non-blocking listener
// and a socket whose close does not linger (linger off, or 0: a reset),
// and the scheduler's bookkeeping costs
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

func closeRaw(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

// noLinger makes close send a reset; see resetRaw. defaultLinger is a
// socket's own: close sends a FIN and returns at once.
var (
	noLinger      = syscall.Linger{Onoff: 1, Linger: 0}
	defaultLinger = syscall.Linger{}
)

// resetRaw closes a refused connection with a single RST (SO_LINGER 0),
// as HAProxy's tcp-request connection reject does: the socket skips
// FIN-WAIT and TIME-WAIT, and a conntrack entry on the path goes to CLOSE
// (10 s) instead of TIME_WAIT (120 s), so a refused flood does not fill
// the host's table.
func resetRaw(fd int) {
	lingerRaw(fd, &noLinger)
	closeRaw(fd)
}

func lingerRaw(fd int, l *syscall.Linger) {
	syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_LINGER,
		uintptr(unsafe.Pointer(l)), unsafe.Sizeof(*l), 0)
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
