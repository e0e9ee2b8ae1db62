//go:build !linux || imapgate_portable

package sock

import (
	"errors"
	"net"
	"net/netip"
)

// Raw says the raw paths are in use: not here.
const Raw = false

// Acceptor is the portable accept loop: net.Listener.Accept, then the
// caller's decision. A refused connection has cost a goroutine-free but
// otherwise ordinary accept (registration with Go's poller included).
type Acceptor struct {
	ln *net.TCPListener
}

// NewAcceptor prepares accepts on ln.
func NewAcceptor(ln *net.TCPListener) (*Acceptor, error) { return &Acceptor{ln: ln}, nil }

// Close does nothing here: closing the listener ends Accept.
func (a *Acceptor) Close() error { return nil }

// Accept returns the next connection admit keeps, with the local address
// the client reached; see the Linux version.
func (a *Acceptor) Accept(admit func(remote netip.AddrPort) bool) (net.Conn, netip.AddrPort, error) {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return nil, netip.AddrPort{}, err // a *net.OpError says whether it is temporary
		}
		if admit(AddrPort(c.RemoteAddr())) {
			c.(*net.TCPConn).SetNoDelay(true)
			return c, AddrPort(c.LocalAddr()), nil
		}
		c.(*net.TCPConn).SetLinger(0) // a reset, as on Linux
		c.Close()
	}
}

// AcceptFD is Linux-only (Raw is false here): it always fails.
func (a *Acceptor) AcceptFD(func(netip.AddrPort) bool) (int, error) {
	return -1, errors.New("sock: no raw accept here")
}

// LocalAddrFD, CloseFD and ConnFD are Linux-only; they are never reached
// here (Raw is false).
func LocalAddrFD(int) netip.AddrPort { return netip.AddrPort{} }
func CloseFD(int)                    {}
func ResetFD(int)                    {}
func ConnFD(int) (net.Conn, error)   { return nil, errors.New("sock: no raw accept here") }
