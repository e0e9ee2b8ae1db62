package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"

	"imapgate/embedded"
)

func TestImapclientSession(t *testing.T) {
	g := startGate(t, gateOptions{})
	c, err := login("", g.addr, "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if caps := c.Caps(); caps.Has("STARTTLS") {
		t.Errorf("STARTTLS advertised on TLS: %v", caps)
	}
	// APPEND a 1 MiB message with a literal, FETCH it back byte-exact.
	body := make([]byte, 1<<20)
	rand.Read(body)
	msg := []byte("Subject: big\r\n\r\n" + base64.StdEncoding.EncodeToString(body)[:1<<20] + "\r\n")
	app := c.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	ad, err := app.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(ad.UID), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch: %v (%d messages)", err, len(msgs))
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
		t.Fatalf("fetched %d bytes, differ from the %d appended", len(got), len(msg))
	}
	// IDLE held open, then ended.
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	waitLog(t, g, "LOGOUT, user=demo, ip=[::ffff:127.0.0.1]")
}

func TestAuthenticatePlainWithImapclient(t *testing.T) {
	g := startGate(t, gateOptions{})
	conn, err := dialFrom("", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(conn)
	defer c.Close()
	if err := c.Authenticate(sasl.NewPlainClient("", "demo", "demo")); err != nil {
		t.Fatal(err)
	}
	waitLog(t, g, "LOGIN, user=demo,")
}

func TestCurl(t *testing.T) {
	curl := need(t, "curl")
	g := startGate(t, gateOptions{})
	out, err := exec.Command(curl, "-sSk", "--url", "imaps://"+g.addr+"/", "-u", "demo:demo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "INBOX") {
		t.Fatalf("curl LIST: %v: %s", err, out)
	}
	out, err = exec.Command(curl, "-sSk", "--url", "imaps://"+g.addr+"/INBOX;UID=1", "-u", "demo:demo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Subject: Welcome to imapgate") {
		t.Fatalf("curl FETCH: %v: %s", err, out)
	}
	out, err = exec.Command(curl, "-sSk", "--url", "imaps://"+g.addr+"/", "-u", "demo:wrong").CombinedOutput()
	if err == nil {
		t.Fatalf("curl with a wrong password succeeded: %s", out)
	}
	waitLog(t, g, "LOGIN FAILED, method=PLAIN, ip=[::ffff:127.0.0.1]")
}

func TestPythonImaplib(t *testing.T) {
	py := need(t, "python3")
	g := startGate(t, gateOptions{})
	host, port, _ := strings.Cut(g.addr, ":")
	script := fmt.Sprintf(`
import imaplib, ssl
ctx = ssl._create_unverified_context()
c = imaplib.IMAP4_SSL(%q, %s, ssl_context=ctx)
print(c.login("demo", "demo")[0])
typ, data = c.select("INBOX"); print(typ, data[0].decode())
typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"); print(data[0][1].decode().strip())
c.logout()
c = imaplib.IMAP4_SSL(%q, %s, ssl_context=ctx)
print(c.authenticate("PLAIN", lambda _: b"\0demo\0demo")[0])
c.logout()
c = imaplib.IMAP4_SSL(%q, %s, ssl_context=ctx)
try:
    c.login("demo", "wrong")
except imaplib.IMAP4.error as e:
    print("NO", e)
`, host, port, host, port, host, port)
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := []string{"OK", "OK 3", "Subject: Welcome to imapgate", "OK", "NO"}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, w := range want {
		if i >= len(lines) || !strings.HasPrefix(lines[i], w) {
			t.Fatalf("line %d: want %q in\n%s", i, w, out)
		}
	}
	waitLog(t, g, "LOGIN FAILED, user=demo, ip=[::ffff:127.0.0.1]")
}

func TestOpenSSLSClient(t *testing.T) {
	openssl := need(t, "openssl")
	g := startGate(t, gateOptions{})
	cmd := exec.Command(openssl, "s_client", "-quiet", "-connect", g.addr, "-servername", "localhost")
	cmd.Stdin = strings.NewReader("a1 CAPABILITY\r\na2 LOGIN demo demo\r\na3 SELECT INBOX\r\na4 LOGOUT\r\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	for _, w := range []string{"* OK", "a1 OK", "a2 OK", "a3 OK", "* BYE", "a4 OK"} {
		if !strings.Contains(string(out), w) {
			t.Fatalf("missing %q in\n%s", w, out)
		}
	}
	if strings.Contains(string(out), "STARTTLS") {
		t.Errorf("STARTTLS advertised:\n%s", out)
	}
	waitLog(t, g, "LOGOUT, user=demo")
}

// accounts returns n embedded accounts user01..userNN with password pw.
func accounts(n int) []embedded.Account {
	out := make([]embedded.Account, n)
	for i := range out {
		out[i] = embedded.Account{User: fmt.Sprintf("user%02d", i+1), Password: "pw"}
	}
	return out
}
