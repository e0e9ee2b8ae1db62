package proxy

import "time"

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
