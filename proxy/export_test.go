package proxy

// SetTestHooks installs hooks a test uses to make one session panic; the
// returned function restores the previous ones. Call it before starting
// the sessions it concerns.
func SetTestHooks(command func(name string), relay func(b []byte)) (restore func()) {
	oldC, oldR := testHookCommand, testHookRelay
	testHookCommand, testHookRelay = command, relay
	return func() { testHookCommand, testHookRelay = oldC, oldR }
}

// StartSession exposes startSession: whether a newly accepted connection
// may start a session.
func (s *Server) StartSession() bool { return s.startSession() }
