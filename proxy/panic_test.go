package proxy_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"imapgate/proxy"
)

// A bug costs one session, never the process: a panic in the login phase
// and one in a relay direction each end their own session (logged with
// its id, counted), while another session goes on.
func TestPanicCostsOneSession(t *testing.T) {
	restore := proxy.SetTestHooks(
		func(name string) {
			if name == "XPANIC" {
				panic("deliberate panic in the login phase")
			}
		},
		func(b []byte) {
			if bytes.Contains(b, []byte("XPANIC")) {
				panic("deliberate panic in the relay")
			}
		})
	defer restore()
	up := fakeUpstream(t, simpleServer)
	p := startProxy(t, up.upstream(), proxyConfig{})

	bystander := loggedIn(t, p.addr, "b1", "bob")

	pre := dial(t, p.addr)
	pre.expect("* OK")
	pre.send("p1 XPANIC\r\n")
	pre.expectEOF()
	waitLog(t, p, "panic in session id=")

	post := loggedIn(t, p.addr, "r1", "bob")
	post.send("r2 XPANIC\r\n")
	post.expectEOF()

	bystander.send("b2 NOOP\r\n")
	bystander.expect("b2 OK")
	n := 0
	for _, l := range p.log.Lines() {
		if strings.Contains(l, "panic in session id=") && strings.Contains(l, "deliberate panic") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d panic lines, want 2: %q", n, p.log.Lines())
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.srv.Table().Count() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.srv.Table().Count(); got != 1 {
		t.Errorf("table holds %d entries after two panicked sessions, want 1 (the bystander)", got)
	}
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
