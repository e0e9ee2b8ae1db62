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
// goroutine. An admitted one goes to its own goroutine.
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
		conn, local, err := acc.Accept(func(remote netip.AddrPort) bool {
			pending = s.admitRaw(remote)
			return pending.ticket != nil || pending.decision.Refused
		})
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
			conn.Close()
			pending.ticket.Release()
			return ErrServerClosed
		}
		go s.serveConn(conn, pending)
	}
}

// admitRaw decides on a freshly accepted connection from remote. A
// refusal before TLS is reported here, and the caller closes the socket;
// otherwise the admission goes with the connection to its goroutine.
func (s *Server) admitRaw(remote netip.AddrPort) admission {
	a := admission{client: upstream.Client{Remote: remote}, decided: true}
	s.events.Accepted()
	a.ticket, a.decision = s.limiter.Admit(remote.Addr(), time.Now())
	if d := a.decision; d.Refused && d.Action != limiter.Bye && d.WouldRefuse == 0 {
		s.refusedBeforeTLS(d, remote.Addr())
		return admission{}
	}
	return a
}
