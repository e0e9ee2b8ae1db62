package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"imapgate/internal/sock"
	"imapgate/limiter"
	"imapgate/upstream"
)

// serveRaw is Serve's loop for a plain TCP listener with a limiter: the
// limiter decides in the accept loop, and a connection refused before TLS
// is closed there (on Linux before Go's poller ever sees it) and costs no
// goroutine. An admitted one goes to its own goroutine; on Linux with the
// Poller, only once its client has sent a whole first TLS record: until
// then it waits in the poller as a bare descriptor with its table entry
// (park.go).
func (s *Server) serveRaw(ln *net.TCPListener) error {
	acc, err := sock.NewAcceptor(ln)
	if err != nil {
		return err
	}
	s.life.mu.Lock()
	if s.life.shutdown {
		s.life.mu.Unlock()
		acc.Close()
		return ErrServerClosed
	}
	s.life.acceptors = append(s.life.acceptors, acc)
	s.life.mu.Unlock()
	defer acc.Close()
	var backoff time.Duration
	for {
		var pending admission // the admitted connection being handed over
		admit := func(remote netip.AddrPort) bool {
			var keep bool
			pending, keep = s.decide(upstream.Client{Remote: remote})
			return keep
		}
		var (
			conn  net.Conn
			fd    = -1
			local netip.AddrPort
			err   error
		)
		if s.park.poller != nil {
			// A bare descriptor: park makes it a net.Conn only once the
			// client has sent its first record.
			if fd, err = acc.AcceptFD(admit); err == nil {
				local = sock.LocalAddrFD(fd)
			}
		} else {
			conn, local, err = acc.Accept(admit)
		}
		if err != nil {
			pending.ticket.Release() // admitted, but its socket is gone
			if s.closing() {
				return ErrServerClosed
			}
			if !isTemporary(err) {
				return fmt.Errorf("accept: %w", err)
			}
			s.acceptBackoff(err, &backoff)
			continue
		}
		backoff = 0
		pending.client.Local = local
		if !s.startSession() {
			if fd >= 0 {
				sock.CloseFD(fd)
			} else {
				conn.Close()
			}
			pending.ticket.Release()
			return ErrServerClosed
		}
		if fd >= 0 {
			s.parkNew(fd, pending)
			continue
		}
		go s.serveConn(conn, pending)
	}
}

// decide asks the limiter about a new connection from cl and reports the
// decision, unless it is a refusal the client is told of after TLS
// (refuseWithBye reports that). It reports whether the connection goes
// on; if not, the caller closes it.
func (s *Server) decide(cl upstream.Client) (a admission, keep bool) {
	a = admission{client: cl, decided: true}
	s.events.Accepted()
	if s.limiter == nil {
		return a, true
	}
	now := time.Now()
	a.ticket, a.decision = s.limiter.Admit(cl.Remote.Addr(), now)
	d := a.decision
	bye := d.Refused && d.Action == limiter.Bye
	if !bye {
		s.reportAt(d, false, now)
	}
	return a, !d.Refused || bye
}
