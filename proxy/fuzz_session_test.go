package proxy_test

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzUpstreamSession drives whole sessions against an upstream that
// answers with arbitrary bytes (greeting, capability lists, responses,
// literals, an early close): the greeting check, the capability rewrite,
// the login phase's response reader, the ID exchange, the result
// classification and the relay all read them. A panic would be recovered
// per session now, so the target fails on the panic's log line instead.
// The seed corpus runs in every go test; `go test -fuzz
// FuzzUpstreamSession ./proxy/` fuzzes.
func FuzzUpstreamSession(f *testing.F) {
	for _, s := range []string{
		courierGreeting + "a OK CAPABILITY completed\r\nb OK\r\nc OK LOGIN Ok.\r\nd OK\r\n* BYE\r\ne OK\r\n",
		dovecotGreeting + "* ID NIL\r\nimapgate-id OK\r\nc NO [LIMIT] too many\r\n",
		"* OK \xde[CAPABILITY IMAP4rev1 ID] hi\r\n",
		"* OK [CAPABILITY IMAP4rev1 ID LOGINDISABLED] x\r\n* CAPABILITY {5}\r\nSTART\r\na OK\r\n",
		"* OK hi\r\n+ \r\nc OK\r\n* 1 FETCH (BODY[] {3}\r\nabc)\r\nd OK\r\n",
		"* BYE go away\r\n",
		"garbage",
	} {
		f.Add([]byte(s))
	}
	var input atomic.Pointer[[]byte]
	up := fakeUpstream(f, func(u *upstreamConn) {
		u.c.Write(*input.Load())
		u.c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, u.c)
	})
	p := startProxy(f, up.upstream(), proxyConfig{})
	seen := 0 // log lines already checked
	f.Fuzz(func(t *testing.T, b []byte) {
		input.Store(&b)
		conn, err := tls.Dial("tcp", p.addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, "a CAPABILITY\r\nb ID NIL\r\nc LOGIN bob secret\r\nd NOOP\r\ne LOGOUT\r\n")
		io.Copy(io.Discard, conn)
		lines := p.log.Lines()
		for _, l := range lines[min(seen, len(lines)):] {
			if strings.Contains(l, "panic in session") {
				t.Fatalf("upstream bytes %q: %s", b, l)
			}
		}
		seen = len(lines)
	})
}
