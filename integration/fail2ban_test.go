package integration

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fail2ban's stock courier-auth filter, unchanged, over imapgate's log
// file: every failed login through imapgate is matched with the client's
// real address, successful logins are not, and a user name crafted to
// inject a fake ip=[…] bans the real address, not the fake one.
func TestRealFail2banCourierAuthFilter(t *testing.T) {
	regex := need(t, "fail2ban-regex")
	filter := "/etc/fail2ban/filter.d/courier-auth.conf"
	logFile := filepath.Join(t.TempDir(), "mail.log")
	g := startGate(t, gateOptions{logFile: logFile})

	fail := func(src, user string) {
		conn, err := dialFrom(src, g.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(conn)
		if err := c.Login(user, "wrong").Wait(); err == nil {
			t.Fatalf("%s logged in with a wrong password", user)
		}
		c.Close()
	}
	fail("127.0.6.1", "demo")
	fail("127.0.6.2", "nobody@example.com")
	fail("127.0.6.3", "x], ip=[10.9.9.9")
	fail("127.0.6.3", "y, ip=[10.9.9.8], port=[1]")
	// A phone retrying its stale password: one failure for imapgate, and
	// one match for fail2ban (the retries are LOGIN FAILED AGAIN).
	conn, err := dialFrom("127.0.6.5", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	phone := newClient(conn)
	for range 4 {
		if err := phone.Login("demo", "last year's password").Wait(); err == nil {
			t.Fatal("stale password accepted")
		}
	}
	phone.Close()
	// A cancelled AUTHENTICATE is no failure at all.
	if conn, err = dialFrom("127.0.6.6", g.addr); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	r.ReadString('\n')
	conn.Write([]byte("a AUTHENTICATE PLAIN\r\n"))
	r.ReadString('\n')
	conn.Write([]byte("*\r\n"))
	r.ReadString('\n')
	conn.Close()
	waitLog(t, g, "LOGIN REFUSED, method=PLAIN, ip=[::ffff:127.0.6.6]")
	waitLog(t, g, "LOGIN FAILED AGAIN, user=demo, ip=[::ffff:127.0.6.5]")
	ok, err := login("127.0.6.4", g.addr, "demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	ok.Logout().Wait()
	ok.Close()
	waitLog(t, g, "LOGOUT, user=demo, ip=[::ffff:127.0.6.4]")

	out, err := exec.Command(regex, "-o", "<ip>", logFile, filter).CombinedOutput()
	if err != nil {
		t.Fatalf("fail2ban-regex: %v\n%s", err, out)
	}
	var ips []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			ips = append(ips, l)
		}
	}
	want := []string{"127.0.6.1", "127.0.6.2", "127.0.6.3", "127.0.6.3", "127.0.6.5"}
	if strings.Join(ips, " ") != strings.Join(want, " ") {
		t.Fatalf("fail2ban matched %q, want %q\nlog:\n%s", ips, want, strings.Join(g.log.Lines(), "\n"))
	}
}
