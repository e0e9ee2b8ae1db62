package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"imapgate/config"
	"imapgate/conntable"
	"imapgate/gateway"
	"imapgate/limiter"
	"imapgate/proxy"
)

// stubShared is a limiter.Shared whose admissions a test steers: each
// Admit is announced on called, then answered by what the test sends on
// answer (a result, or a panic), or by ctx's end. Everything else
// succeeds and does nothing.
type stubShared struct {
	called chan struct{}
	answer chan stubAnswer
}

type stubAnswer struct {
	res   limiter.SharedResult
	panic bool
}

func (s *stubShared) Admit(ctx context.Context, _ *limiter.SharedAdmit) (limiter.SharedResult, error) {
	s.called <- struct{}{}
	select {
	case a := <-s.answer:
		if a.panic {
			panic("stub admission panics")
		}
		return a.res, nil
	case <-ctx.Done():
		return limiter.SharedResult{}, ctx.Err()
	}
}

func (*stubShared) Release(context.Context, []*limiter.SharedRelease) error { return nil }
func (*stubShared) Login(context.Context, *limiter.SharedLogin) (limiter.SharedResult, error) {
	return limiter.SharedResult{}, nil
}
func (*stubShared) Succeeded(context.Context, *limiter.SharedLogin) error { return nil }
func (*stubShared) Failure(context.Context, *limiter.SharedFailure) (limiter.SharedFailureResult, error) {
	return limiter.SharedFailureResult{}, nil
}
func (*stubShared) Ban(context.Context, limiter.Ban) error              { return nil }
func (*stubShared) Unban(context.Context, netip.Prefix) error           { return nil }
func (*stubShared) UnbanUser(context.Context, netip.Addr, string) error { return nil }
func (*stubShared) KnownGood(netip.Prefix, time.Time)                   {}
func (*stubShared) Publish(context.Context, *limiter.Snapshot) error    { return nil }
func (*stubShared) Down(error)                                          {}

var _ proxy.Events = (*waitEvents)(nil)

// waitEvents records the verdict waits; the rest of proxy.Events is
// ignored.
type waitEvents struct {
	mu             sync.Mutex
	waits          []time.Duration
	handshakeFails int
	refusedAfter   int // refusals reported as told after TLS
}

func (e *waitEvents) SharedVerdictWait(d time.Duration) {
	e.mu.Lock()
	e.waits = append(e.waits, d)
	e.mu.Unlock()
}

func (e *waitEvents) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.waits)
}

func (*waitEvents) Accepted() {}
func (e *waitEvents) Refused(_ string, afterTLS bool) {
	if afterTLS {
		e.mu.Lock()
		e.refusedAfter++
		e.mu.Unlock()
	}
}
func (*waitEvents) WouldRefuse(string) {}
func (e *waitEvents) Handshake(_ time.Duration, err error) {
	if err != nil {
		e.mu.Lock()
		e.handshakeFails++
		e.mu.Unlock()
	}
}

func (e *waitEvents) counts() (handshakeFails, refusedAfter int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handshakeFails, e.refusedAfter
}
func (*waitEvents) Login(string)                      {}
func (*waitEvents) Ban()                              {}
func (*waitEvents) UpstreamDial(time.Duration, error) {}
func (*waitEvents) Closed()                           {}
func (*waitEvents) Panic()                            {}

// sharedProxy is a proxy whose limiter shares through a stubShared (up,
// with a 20 s deadline per call), and whose silent timeout (60 s) no
// test here reaches.
func sharedProxy(t *testing.T) (*testProxy, *stubShared, *waitEvents) {
	t.Helper()
	lim, err := limiter.New(gateway.Policy(config.Default()), limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := &stubShared{called: make(chan struct{}, 8), answer: make(chan stubAnswer, 8)}
	lim.SetShared(st, time.Second, 20*time.Second)
	if err := lim.Republish(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	ev := &waitEvents{}
	var tc conntable.Config
	tc.Timeouts[conntable.Handshake] = time.Minute
	tc.Silent = time.Minute
	p := startProxy(t, fakeUpstream(t, simpleServer).upstream(), proxyConfig{limiter: lim, table: tc, events: ev})
	return p, st, ev
}

// announcingConn tells, once, that its first write (the ClientHello) has
// gone out.
type announcingConn struct {
	net.Conn
	once  sync.Once
	wrote chan struct{}
}

func (c *announcingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.once.Do(func() { close(c.wrote) })
	return n, err
}

// The shared admission's round trip runs while the client sends its
// ClientHello: it is asked before the client has sent a byte, the
// ClientHello goes out while it is still unanswered, and the session goes
// on once it answers. The wait it added is reported once.
func TestSharedVerdictOverlapsTheClientHello(t *testing.T) {
	p, st, ev := sharedProxy(t)
	tc, done, wrote := startHello(t, p, st)
	<-wrote
	st.answer <- stubAnswer{} // admitted, after the ClientHello left
	if err := <-done; err != nil {
		t.Fatalf("handshake after the verdict: %v", err)
	}
	c := &client{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.expect("* OK")
	if n := ev.count(); n != 1 {
		t.Errorf("%d verdict waits reported, want 1", n)
	}
}

// A shared refusal that closes before TLS (max_connections) resets a
// client that has sent nothing at once: the wait for its first record is
// cut short, not left to the silent timeout.
func TestSharedCloseRefusalResetsASilentClient(t *testing.T) {
	p, st, _ := sharedProxy(t)
	st.answer <- stubAnswer{res: limiter.SharedResult{Refused: true, Reason: limiter.MaxConnections, Limit: 1}}
	raw, err := net.Dial("tcp", p.addr)
	if err == nil { // else the reset came before the connect returned
		defer raw.Close()
		raw.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err = raw.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("silent client refused by a shared limit: read gave %v, want a reset", err)
	}
	waitLog(t, p, "maximum active connections.") // couriertcpd's MAXDAEMONS line
}

// A shared refusal with bye (max_per_ip) answers after TLS, as a local one.
func TestSharedByeRefusalAfterTLS(t *testing.T) {
	p, st, _ := sharedProxy(t)
	st.answer <- stubAnswer{res: limiter.SharedResult{Refused: true, Reason: limiter.MaxPerIP, Limit: 4}}
	c := dial(t, p.addr)
	c.expect("* BYE [UNAVAILABLE]")
	c.expectEOF()
}

// A panic in the shared admission costs that session only: it is logged
// with the session's id, the connection closes, and the next one is
// served.
func TestSharedAdmissionPanicCostsOneSession(t *testing.T) {
	p, st, _ := sharedProxy(t)
	st.answer <- stubAnswer{panic: true}
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a session whose admission panicked", n)
	}
	waitLog(t, p, "panic in session id=")
	st.answer <- stubAnswer{}
	c := dial(t, p.addr)
	c.expect("* OK")
}

// dialAsked dials p and waits until its shared admission is asked, while
// the client has sent nothing.
func dialAsked(t *testing.T, p *testProxy, st *stubShared) net.Conn {
	t.Helper()
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	select {
	case <-st.called:
	case <-time.After(10 * time.Second):
		t.Fatal("no shared admission for a connection whose client has sent nothing")
	}
	return raw
}

// startHello is dialAsked, then a TLS handshake: it returns the client's
// connection, the handshake's result to come, and the signal that the
// ClientHello has gone out.
func startHello(t *testing.T, p *testProxy, st *stubShared) (*tls.Conn, chan error, chan struct{}) {
	t.Helper()
	ac := &announcingConn{Conn: dialAsked(t, p, st), wrote: make(chan struct{})}
	tc := tls.Client(ac, &tls.Config{InsecureSkipVerify: true})
	done := make(chan error, 1)
	go func() { done <- tc.Handshake() }()
	return tc, done, ac.wrote
}

// A close refusal that comes after the ClientHello resets the connection
// before any greeting: during the handshake (which it cuts short) or
// right after it. The refusal is logged in couriertcpd's words, and no
// handshake is counted as failed.
func TestSharedCloseRefusalAfterTheClientHello(t *testing.T) {
	p, st, ev := sharedProxy(t)
	tc, done, wrote := startHello(t, p, st)
	<-wrote
	st.answer <- stubAnswer{res: limiter.SharedResult{Refused: true, Reason: limiter.MaxConnections, Limit: 1}}
	err := <-done
	if err == nil { // the client's side of TLS 1.3 may finish first
		_, err = tc.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client refused after its ClientHello: %v, want a reset", err)
	}
	waitLog(t, p, "maximum active connections.")
	if fails, _ := ev.counts(); fails != 0 {
		t.Errorf("%d handshake failures counted for a refusal", fails)
	}
}

// The shared verdict is awaited once TLS is up: the handshake completes
// while the admission's round trip is still out, and the greeting waits
// for it. Once more than the burst of such refusals came within a second,
// the next connection takes its verdict before TLS again: its handshake
// does not complete while the round trip is out.
func TestSharedVerdictAfterTLSUntilLateRefusalsPile(t *testing.T) {
	p, st, _ := sharedProxy(t)
	p.srv.SetLateRefusalBurst(1)
	handshakeBeforeVerdict := func() bool {
		t.Helper()
		tc, done, _ := startHello(t, p, st)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			st.answer <- stubAnswer{}
			c := &client{t: t, conn: tc, r: bufio.NewReader(tc)}
			c.expect("* OK")
			return true
		case <-time.After(500 * time.Millisecond):
			st.answer <- stubAnswer{}
			if err := <-done; err != nil {
				t.Fatalf("handshake after the verdict: %v", err)
			}
			return false
		}
	}
	if !handshakeBeforeVerdict() {
		t.Fatal("the handshake waited for the shared verdict")
	}
	for i := 0; i < 2; i++ { // the burst of 1, and one more
		tc, done, _ := startHello(t, p, st)
		if err := <-done; err != nil {
			t.Fatalf("refusal %d: handshake: %v", i, err)
		}
		// A refusal the node does not remember (a concurrency refusal
		// would refuse the next connection from memory, without asking).
		st.answer <- stubAnswer{res: limiter.SharedResult{Refused: true, Reason: limiter.MaxPreauthPerIP, Limit: 1}}
		if line, err := bufio.NewReader(tc).ReadString('\n'); err == nil {
			t.Fatalf("refusal %d: the client read %q", i, line)
		}
	}
	if handshakeBeforeVerdict() {
		t.Fatal("past the burst of late refusals, the handshake still ran before the verdict")
	}
}

// A refusal with bye that comes after the ClientHello lets the handshake
// finish, then says why: a BYE, the end, and the refusal counted as told
// after TLS.
func TestSharedByeRefusalAfterTheClientHello(t *testing.T) {
	p, st, ev := sharedProxy(t)
	tc, done, wrote := startHello(t, p, st)
	<-wrote
	st.answer <- stubAnswer{res: limiter.SharedResult{Refused: true, Reason: limiter.MaxPerIP, Limit: 4}}
	if err := <-done; err != nil {
		t.Fatalf("handshake of a client refused with bye: %v", err)
	}
	c := &client{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.expect("* BYE [UNAVAILABLE] Too many connections from your address.")
	c.expectEOF()
	if _, told := ev.counts(); told != 1 {
		t.Errorf("%d refusals told after TLS, want 1", told)
	}
}

// A first record that is no ClientHello, with the verdict still out, ends
// the session once the verdict is in, not before (the ticket is released
// after Confirm is done with it): the wait is reported, and the next
// client is served.
func TestSharedVerdictSettledBeforeABadFirstRecordEnds(t *testing.T) {
	p, st, ev := sharedProxy(t)
	raw := dialAsked(t, p, st)
	// A whole handshake record whose body is no ClientHello.
	if _, err := raw.Write([]byte{22, 3, 1, 0, 4, 99, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the session would end meanwhile
	if n := ev.count(); n != 0 {
		t.Fatalf("%d verdict waits reported before the verdict came", n)
	}
	st.answer <- stubAnswer{}
	buf := make([]byte, 64)
	for {
		if _, err := raw.Read(buf); err != nil {
			break // the alert, then the end
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for ev.count() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := ev.count(); n != 1 {
		t.Fatalf("%d verdict waits reported, want 1", n)
	}
	st.answer <- stubAnswer{}
	c := dial(t, p.addr)
	c.expect("* OK")
}
