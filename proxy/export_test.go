package proxy

import (
	"net"
	"os"
)

// SetTestHooks installs hooks a test uses to make one session panic; the
// returned function restores the previous ones. Call it before starting
// the sessions it concerns.
func SetTestHooks(command func(name string), relay func(b []byte)) (restore func()) {
	oldC, oldR := testHookCommand, testHookRelay
	testHookCommand, testHookRelay = command, relay
	return func() { testHookCommand, testHookRelay = oldC, oldR }
}

// SetFileConn replaces net.FileConn in the exec upstream.
func SetFileConn(f func(*os.File) (net.Conn, error)) (restore func()) {
	old := fileConn
	fileConn = f
	return func() { fileConn = old }
}

// NewExecUpstreamForTest builds an ExecUpstream without NewExecUpstream's
// root and program checks, for tests that never start a program.
func NewExecUpstreamForTest(argv []string) *ExecUpstream { return &ExecUpstream{argv: argv} }

// StartSession exposes startSession: whether a newly accepted connection
// may start a session.
func (s *Server) StartSession() bool { return s.startSession() }
