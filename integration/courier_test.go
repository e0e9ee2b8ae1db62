package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"imapgate/config"
	"imapgate/internal/envfile"
	"imapgate/upstream"
)

// courier describes the real courier-imap that integration/courier/setup.sh
// started; IMAPGATE_COURIER names its env file.
type courier struct {
	plain, tls string
	users      []string
	pass       string
	log        string
	setup      string
	imaplogin  string
	imapd      string
	etc        string
}

func needCourier(t *testing.T) *courier {
	t.Helper()
	path := os.Getenv("IMAPGATE_COURIER")
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("IMAPGATE_COURIER is not set: the real-courier tests must run in CI (.ci/run starts courier)")
		}
		t.Skip("real courier not configured: run `sudo integration/courier/setup.sh install && sudo integration/courier/setup.sh start`, then IMAPGATE_COURIER=/tmp/imapgate-courier/env go test ./integration/")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("IMAPGATE_COURIER: %v", err)
	}
	env := envfile.Parse(data)
	c := &courier{plain: env["COURIER_PLAIN"], tls: env["COURIER_TLS"], users: strings.Fields(env["COURIER_USERS"]),
		pass: env["COURIER_PASS"], log: env["COURIER_LOG"], setup: env["COURIER_SETUP"],
		imaplogin: env["COURIER_IMAPLOGIN"], imapd: env["COURIER_IMAPD"], etc: env["COURIER_ETC"]}
	if conn, err := net.DialTimeout("tcp", c.plain, 2*time.Second); err != nil {
		t.Fatalf("courier is configured but not reachable at %s: %v", c.plain, err)
	} else {
		conn.Close()
	}
	return c
}

func courierGate(t *testing.T, c *courier) *gate {
	return startGate(t, gateOptions{upstream: &upstream.TCP{Address: c.plain, ConnectTimeout: 2 * time.Second}})
}

func TestRealCourierLoginAndAuthenticatePlain(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	cl, err := login("127.0.4.1", g.addr, c.users[0], c.pass)
	if err != nil {
		t.Fatal(err)
	}
	if !cl.Caps().Has("IDLE") || cl.Caps().Has("STARTTLS") {
		t.Errorf("caps %v", cl.Caps())
	}
	cl.Logout().Wait()
	cl.Close()
	conn, err := dialFrom("127.0.4.2", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	cl = newClient(conn)
	if err := cl.Authenticate(sasl.NewPlainClient("", c.users[1], c.pass)); err != nil {
		t.Fatal(err)
	}
	cl.Logout().Wait()
	cl.Close()
	waitLog(t, g, "LOGIN, user=testuser, ip=[::ffff:127.0.4.1]")
	waitLog(t, g, "LOGOUT, user=testuser, ip=[::ffff:127.0.4.1]")
	waitLog(t, g, "LOGIN, user=testuser2, ip=[::ffff:127.0.4.2]")
}

// Courier answers a wrong password after 5 s; these run in parallel.
func TestRealCourierWrongPassword(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	for _, mode := range []string{"login", "authenticate"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			src := map[string]string{"login": "127.0.4.3", "authenticate": "127.0.4.4"}[mode]
			conn, err := dialFrom(src, g.addr)
			if err != nil {
				t.Fatal(err)
			}
			cl := newClient(conn)
			defer cl.Close()
			if mode == "login" {
				err = cl.Login(c.users[0], "wrong").Wait()
			} else {
				err = cl.Authenticate(sasl.NewPlainClient("", c.users[0], "wrong"))
			}
			if err == nil {
				t.Fatal("wrong password accepted")
			}
			want := map[string]string{
				"login":        "LOGIN FAILED, user=testuser, ip=[::ffff:127.0.4.3], port=[",
				"authenticate": "LOGIN FAILED, method=PLAIN, ip=[::ffff:127.0.4.4], port=[",
			}[mode]
			waitLog(t, g, want)
		})
	}
}

func TestRealCourierLargeFetchAppendIdle(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	fetchBig := func(cl *imapclient.Client) []byte {
		t.Helper()
		if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		sec := &imap.FetchItemBodySection{Peek: true}
		msgs, err := cl.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("fetch: %v", err)
		}
		return msgs[0].FindBodySection(sec)
	}
	direct, err := tls.Dial("tcp", c.tls, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	dc := newClient(direct)
	if err := dc.Login(c.users[1], c.pass).Wait(); err != nil {
		t.Fatal(err)
	}
	want := fetchBig(dc)
	dc.Logout().Wait()
	dc.Close()

	cl, err := login("127.0.4.5", g.addr, c.users[1], c.pass)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := fetchBig(cl)
	if len(want) < 1<<20 || !bytes.Equal(got, want) {
		t.Fatalf("through imapgate %d bytes, directly %d: differ", len(got), len(want))
	}

	msg := []byte("Subject: appended through imapgate\r\n\r\n" + strings.Repeat("line of text\r\n", 5000))
	app := cl.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	ad, err := app.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// Courier shows a message appended to the selected mailbox only after
	// it rescans, which NOOP triggers (the same without imapgate).
	if err := cl.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	sec := &imap.FetchItemBodySection{Peek: true}
	msgs, err := cl.Fetch(imap.UIDSetNum(ad.UID), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
	if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0].FindBodySection(sec), msg) {
		t.Fatalf("appended message did not come back byte-exact: %v", err)
	}
	idle, err := cl.Idle()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // IDLE held open across courier's poll
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

// Courier's imaplogin drops commands that arrive with LOGIN; through
// imapgate they are answered.
func TestRealCourierPipelinedAfterLogin(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	pipeline := fmt.Sprintf("a1 LOGIN %s %s\r\na2 SELECT INBOX\r\na3 NOOP\r\n", c.users[0], c.pass)

	conn, err := dialFrom("127.0.4.6", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	r.ReadString('\n')
	conn.Write([]byte(pipeline))
	tagged := map[string]bool{}
	for len(tagged) < 3 {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %v: %v", tagged, err)
		}
		if tag, rest, _ := strings.Cut(l, " "); tag != "*" && strings.HasPrefix(rest, "OK") {
			tagged[tag] = true
		}
	}

	// For reference only (logged, not asserted: a newer courier may answer
	// them): what courier alone does with the same pipeline.
	direct, err := net.Dial("tcp", c.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	dr := bufio.NewReader(direct)
	dr.ReadString('\n')
	direct.Write([]byte(pipeline))
	direct.SetReadDeadline(time.Now().Add(2 * time.Second))
	var seen []string
	for {
		l, err := dr.ReadString('\n')
		if err != nil {
			break
		}
		seen = append(seen, strings.TrimSpace(l))
	}
	if strings.Contains(strings.Join(seen, "\n"), "a3 OK") {
		t.Logf("note: this courier answered pipelined commands itself: %q", seen)
	}
}

func TestRealCourierLogoutDropAndRestart(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	cl, err := login("127.0.4.7", g.addr, c.users[0], c.pass)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close() // dropped without LOGOUT
	waitLog(t, g, "DISCONNECTED, user=testuser, ip=[::ffff:127.0.4.7]")

	if c.setup == "" || os.Geteuid() != 0 {
		t.Skip("restarting courier needs root and setup.sh")
	}
	live, err := login("127.0.4.8", g.addr, c.users[0], c.pass)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if out, err := exec.Command(c.setup, "restart").CombinedOutput(); err != nil {
		t.Fatalf("restart courier: %v\n%s", err, out)
	}
	// The session courier closed ends cleanly; a new one works.
	waitLog(t, g, "ip=[::ffff:127.0.4.8]")
	waitFor(t, "courier back", func() bool {
		cl, err := login("127.0.4.9", g.addr, c.users[0], c.pass)
		if err != nil {
			return false
		}
		cl.Logout().Wait()
		cl.Close()
		return true
	})
}

// logFields splits a courier message into its event and key=value fields.
var fieldRE = regexp.MustCompile(`^([a-z]+)=(.*)$`)

func logFields(msg string) (event string, keys []string, vals map[string]string) {
	parts := strings.Split(msg, ", ")
	event, vals = parts[0], map[string]string{}
	for _, p := range parts[1:] {
		if m := fieldRE.FindStringSubmatch(p); m != nil {
			keys = append(keys, m[1])
			vals[m[1]] = m[2]
		}
	}
	return event, keys, vals
}

// courierLogSize is where courier's log ends now: lines for a new
// connection are looked for only after it, because the log is shared by
// the whole run and an earlier connection may have used the same port.
func courierLogSize(t *testing.T, c *courier) int {
	data, err := os.ReadFile(c.log)
	if err != nil {
		t.Fatal(err)
	}
	return len(data)
}

// courierLines returns courier's imapd-ssl messages for a client port
// written after byte offset from.
func courierLines(t *testing.T, c *courier, port, from int) []string {
	data, err := os.ReadFile(c.log)
	if err != nil {
		t.Fatal(err)
	}
	if from > len(data) {
		t.Fatalf("courier's log %s shrank from %d to %d bytes", c.log, from, len(data))
	}
	var out []string
	for _, l := range strings.Split(string(data[from:]), "\n") {
		_, msg, ok := strings.Cut(l, " imapd-ssl: ")
		if ok && strings.Contains(msg, fmt.Sprintf("port=[%d]", port)) {
			out = append(out, msg)
		}
	}
	return out
}

// gateLines returns imapgate's messages for a client port, from line from on.
func gateLines(g *gate, port, from int) []string {
	var out []string
	for _, l := range g.log.Lines()[from:] {
		_, msg, _ := strings.Cut(l, " ")
		if strings.Contains(msg, fmt.Sprintf("port=[%d]", port)) {
			out = append(out, msg)
		}
	}
	return out
}

// The golden test: the same client actions against courier's own
// imapd-ssl and through imapgate give the same lines, field by field.
// rcvd and sent differ by design (courier's imapd counts from its exec,
// imapgate the whole session) and are compared as numbers present.
func TestRealCourierGoldenLogLines(t *testing.T) {
	c := needCourier(t)
	g := courierGate(t, c)
	scenarios := []struct {
		name string
		run  func(conn net.Conn, r *bufio.Reader)
	}{
		{"login-logout", func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "a1 LOGIN %s %s\r\n", c.users[0], c.pass)
			readTagged(r, "a1")
			fmt.Fprintf(conn, "a2 LOGOUT\r\n")
			readTagged(r, "a2")
		}},
		{"login-drop", func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "a1 LOGIN %s %s\r\n", c.users[0], c.pass)
			readTagged(r, "a1")
		}},
		{"preauth-logout", func(conn net.Conn, r *bufio.Reader) {
			fmt.Fprintf(conn, "a1 LOGOUT\r\n")
			readTagged(r, "a1")
		}},
		{"preauth-drop", func(conn net.Conn, r *bufio.Reader) {}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			run := func(addr string) int {
				conn, err := tls.Dial("tcp", addr, clientTLS)
				if err != nil {
					t.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(conn)
				r.ReadString('\n')
				sc.run(conn, r)
				conn.Close()
				return conn.LocalAddr().(*net.TCPAddr).Port
			}
			cfrom, gfrom := courierLogSize(t, c), len(g.log.Lines())
			cport, gport := run(c.tls), run(g.addr)
			var want, got []string
			if !pollUntil(10*time.Second, func() bool {
				want, got = courierLines(t, c, cport, cfrom), gateLines(g, gport, gfrom)
				return len(want) > 0 && len(want) == len(got)
			}) {
				t.Fatalf("courier's and imapgate's lines never matched in count:\n courier (port %d):\n  %s\n imapgate (port %d):\n  %s",
					cport, strings.Join(want, "\n  "), gport, strings.Join(got, "\n  "))
			}
			for i := range want {
				we, wk, wv := logFields(want[i])
				ge, gk, gv := logFields(got[i])
				if we != ge || strings.Join(wk, ",") != strings.Join(gk, ",") {
					t.Fatalf("line %d:\n courier:  %s\n imapgate: %s", i, want[i], got[i])
				}
				for _, k := range wk {
					switch k {
					case "port":
					case "rcvd", "sent":
						if wv[k] == "" || gv[k] == "" {
							t.Errorf("%s missing", k)
						}
					default:
						if wv[k] != gv[k] {
							t.Errorf("line %d field %s: courier %q, imapgate %q", i, k, wv[k], gv[k])
						}
					}
				}
			}
		})
	}
}

func readTagged(r *bufio.Reader, tag string) {
	for {
		l, err := r.ReadString('\n')
		if err != nil || strings.HasPrefix(l, tag+" ") {
			return
		}
	}
}

// Upstream over TLS: courier's own imapd-ssl behind imapgate. Its
// certificate is self-signed, so verification must be off to connect, and
// on it must refuse with a prompt BYE.
func TestRealCourierUpstreamTLS(t *testing.T) {
	c := needCourier(t)
	for _, verify := range []bool{false, true} {
		g := startGate(t, gateOptions{upstream: &upstream.TCP{Address: c.tls, ConnectTimeout: 2 * time.Second,
			TLS: &tls.Config{ServerName: "localhost", InsecureSkipVerify: !verify}}})
		cl, err := login("127.0.4.10", g.addr, c.users[0], c.pass)
		if !verify {
			if err != nil {
				t.Fatalf("upstream TLS without verification: %v", err)
			}
			cl.Logout().Wait()
			cl.Close()
			continue
		}
		if err == nil {
			cl.Close()
			t.Fatal("self-signed upstream accepted with verification on")
		}
		waitLog(t, g, "upstream unavailable: TLS handshake with "+c.tls)
	}
}

// exec mode: imapgate starts courier's imaplogin per session with
// couriertcpd's environment; courier itself logs the real client address.
func TestRealCourierExecMode(t *testing.T) {
	c := needCourier(t)
	if os.Geteuid() != 0 {
		t.Skip("exec mode needs root (imaplogin switches to the mailbox owner)")
	}
	vars, _, err := config.ShellVars(config.CourierFiles(filepath.Join(c.etc, "imapd-ssl"))...)
	if err != nil {
		t.Fatal(err)
	}
	g := startGate(t, gateOptions{exec: []string{c.imaplogin, c.imapd, "Maildir"}, execVars: vars})
	cl, err := login("127.0.7.1", g.addr, c.users[0], c.pass)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Caps().Has("STARTTLS") || !cl.Caps().Has("IDLE") {
		t.Errorf("caps %v", cl.Caps())
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	cl.Logout().Wait()
	cl.Close()
	// Courier's own lines, with the real address and starttls=1 (IMAP_TLS=1).
	waitLog(t, g, "LOGIN, user=testuser, ip=[::ffff:127.0.7.1], port=[")
	waitLog(t, g, "LOGOUT, user=testuser, ip=[::ffff:127.0.7.1]")
	waitLog(t, g, ", starttls=1")
	n := 0
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "LOGIN, user=testuser, ip=[::ffff:127.0.7.1]") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d LOGIN lines, want courier's one (imapgate's own are off in exec mode)", n)
	}

	// A wrong password: LOGIN FAILED with the real address, in courier's
	// words (imapgate writes it in exec mode, and drops courier's own);
	// the same wrong password again is a retry (a stale phone), LOGIN
	// FAILED AGAIN, which fail2ban's courier-auth filter does not count.
	conn, err := dialFrom("127.0.7.2", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	bad := newClient(conn)
	for range 2 {
		if bad.Login(c.users[0], "wrong").Wait() == nil {
			t.Fatal("wrong password accepted")
		}
	}
	bad.Close()
	waitLog(t, g, "LOGIN FAILED AGAIN, user=testuser, ip=[::ffff:127.0.7.2], port=[")
	n = 0
	for _, l := range g.log.Lines() {
		if strings.Contains(l, "LOGIN FAILED, user=testuser, ip=[::ffff:127.0.7.2], port=[") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d LOGIN FAILED lines for two tries of one password, want 1 (and one LOGIN FAILED AGAIN)", n)
	}
}
