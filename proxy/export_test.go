package proxy

import (
	"net/netip"
	"time"

	"imapgate/internal/throttle"
	"imapgate/upstream"
)

// SetTestHooks installs hooks a test uses to make one session panic; the
// returned function restores the previous ones. Call it before starting
// the sessions it concerns.
func SetTestHooks(command func(name string), relay func(b []byte)) (restore func()) {
	oldC, oldR := testHookCommand, testHookRelay
	testHookCommand, testHookRelay = command, relay
	return func() { testHookCommand, testHookRelay = oldC, oldR }
}

// FlushSuppressed exposes flushSuppressed: the suppressed counts no later
// line carried, as the 5-second ticker writes them.
func (s *Server) FlushSuppressed(now time.Time) { s.flushSuppressed(now) }

// StartSession exposes startSession: whether a newly accepted connection
// may start a session.
func (s *Server) StartSession() bool { return s.startSession() }

// SetLateRefusalBurst sets how many shared refusals a second may come
// after a handshake ran before admissions wait for the verdict first.
func (s *Server) SetLateRefusalBurst(n int) { s.late.t = throttle.New(time.Second, n) }

// Decide exposes decide for a connection from remote: whether it goes on.
// An admitted connection's places are released at once.
func (s *Server) Decide(remote netip.AddrPort) bool {
	a, keep := s.decide(upstream.Client{Remote: remote})
	a.ticket.Release()
	return keep
}
