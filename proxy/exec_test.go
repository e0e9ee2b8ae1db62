package proxy_test

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"

	"imapgate/proxy"
)

// When wrapping the socketpair fails (EMFILE at the worst moment), the
// exec upstream releases both of its descriptors, each by its one owner,
// and leaves every other descriptor of the process open.
func TestExecUpstreamFileConnFailureReleasesItsOwn(t *testing.T) {
	restore := proxy.SetFileConn(func(*os.File) (net.Conn, error) {
		return nil, errors.New("too many open files")
	})
	defer restore()
	before := openFDs(t)
	u := proxy.NewExecUpstreamForTest([]string{"/bin/false", "/bin/false", "Maildir"})
	for range 20 {
		if _, err := u.Dial(context.Background(), proxy.Client{}); err == nil {
			t.Fatal("Dial succeeded with a failing FileConn")
		}
	}
	after := openFDs(t)
	for fd := range before {
		if !after[fd] {
			t.Errorf("descriptor %s, open before, was closed", fd)
		}
	}
	for fd := range after {
		if !before[fd] {
			t.Errorf("descriptor %s leaked", fd)
		}
	}
}

func openFDs(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	m := map[string]bool{}
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

// A connection accepted while Shutdown begins is either waited for or
// refused: once Shutdown (or Close) has begun, no session starts, so the
// WaitGroup is never added to while it is waited on.
func TestNoSessionStartsAfterShutdownBegan(t *testing.T) {
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})
	p.srv.Close()
	if p.srv.StartSession() {
		t.Fatal("a session started after Close")
	}
}
