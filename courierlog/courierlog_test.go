package courierlog

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7": "::ffff:192.0.2.7", "::ffff:192.0.2.7": "::ffff:192.0.2.7",
		"2001:db8::1": "2001:db8::1", "::1": "::1",
	} {
		if got := Addr(netip.MustParseAddr(in)); got != want {
			t.Errorf("Addr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestAppendUser(t *testing.T) {
	for in, want := range map[string]string{
		"bob@example.com":  "bob@example.com",
		"ev\til":           "ev.il",            // courier_safe_printf
		"caf\u00e9":        "caf..",            // UTF-8 bytes, as courier
		"x], ip=[10.9.9.9": "x.. ip=.10.9.9.9", // no forged field
	} {
		if got := string(AppendUser(nil, in)); got != want {
			t.Errorf("AppendUser(%q) = %q, want %q", in, got, want)
		}
	}
	if n := len(AppendUser(nil, string(make([]byte, 5000)))); n != maxUser {
		t.Errorf("long user name kept %d bytes", n)
	}
}

func TestLinesInSyslogFileFormat(t *testing.T) {
	var buf bytes.Buffer
	sink := NewLineSink(&buf, "vm", "imapd-ssl")
	sink.SetClock(func() time.Time { return time.Date(2026, 11, 2, 4, 23, 47, 0, time.Local) })
	l := New(sink, Options{TLS: true})
	c := netip.MustParseAddrPort("192.0.2.7:43894")
	l.LoginFailed("testuser", c)
	l.SessionEnd(EndLogout, "testuser", c, Counts{Rcvd: 29, Sent: 157, Elapsed: 1500 * time.Millisecond})
	l.LogoutPreauth(c, Counts{Rcvd: 11, Sent: 326})
	if buf.Len() != 0 {
		t.Error("lines written before the flush interval")
	}
	sink.Flush()
	want := "Nov  2 04:23:47 vm imapd-ssl: LOGIN FAILED, user=testuser, ip=[::ffff:192.0.2.7], port=[43894]\n" +
		"Nov  2 04:23:47 vm imapd-ssl: LOGOUT, user=testuser, ip=[::ffff:192.0.2.7], port=[43894], headers=0, body=0, rcvd=29, sent=157, time=1, starttls=1\n" +
		"Nov  2 04:23:47 vm imapd-ssl: LOGOUT, ip=[::ffff:192.0.2.7], port=[43894], rcvd=11, sent=326\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestCourierLinePriorities(t *testing.T) {
	mem := &Memory{}
	l := New(mem, Options{})
	l.CourierLine("INFO: LOGIN, user=x, ip=[::1], port=[1], protocol=IMAP")
	l.CourierLine("DEBUG: Connection, ip=[::1], port=[1]")
	l.CourierLine("ALERT: Maximum connection limit reached for ::1")
	l.CourierLine("NOTICE: Disconnected during shutdown by signal, ip=[::1], port=[1], time=2")
	want := []string{
		"info LOGIN, user=x, ip=[::1], port=[1], protocol=IMAP",
		"debug Connection, ip=[::1], port=[1]",
		"alert Maximum connection limit reached for ::1",
		"info NOTICE: Disconnected during shutdown by signal, ip=[::1], port=[1], time=2",
	}
	got := mem.Lines()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// In exec mode courier writes the session lines itself, but not the
// failed and refused logins' lines: imapgate writes those (a retry's is
// LOGIN FAILED AGAIN, a ban's refusal is imapgate's own).
func TestWithoutSessionLines(t *testing.T) {
	mem := &Memory{}
	l := New(mem, Options{}).WithoutSessionLines()
	c := netip.MustParseAddrPort("192.0.2.1:1")
	l.Connection(c)
	l.Login("bob", c)
	l.MaxPerIP(c.Addr())
	l.LoginFailed("bob", c)
	l.LoginFailedMethod("PLAIN", c)
	l.LoginFailedAgain("bob", "", c)
	l.LoginRefused("bob", "", "banned", c)
	want := []string{
		"alert Maximum connection limit reached for ::ffff:192.0.2.1",
		"info LOGIN FAILED, user=bob, ip=[::ffff:192.0.2.1], port=[1]",
		"info LOGIN FAILED, method=PLAIN, ip=[::ffff:192.0.2.1], port=[1]",
		"info LOGIN FAILED AGAIN, user=bob, ip=[::ffff:192.0.2.1], port=[1]",
		"info LOGIN REFUSED, user=bob, ip=[::ffff:192.0.2.1], port=[1], reason=banned",
	}
	if got := mem.Lines(); !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// Golden lines for the login results courier has no line of its own for.
// Each keeps courier's shape (who, then ip=[…], port=[…]) and none begins
// "LOGIN FAILED, ", the prefix fail2ban's courier-auth filter matches: only
// courier's own LOGIN FAILED lines (TestLinesInSyslogFileFormat) may.
func TestLoginResultGoldenLines(t *testing.T) {
	mem := &Memory{}
	l := New(mem, Options{TLS: true})
	c := netip.MustParseAddrPort("192.0.2.7:43894")
	l.LoginRefused("testuser", "", "limit", c)
	l.LoginRefused("testuser", "PLAIN", "privacyrequired", c)
	l.LoginRefused("", "PLAIN", "cancelled", c)
	l.LoginRefused("bob], ip=[10.9.9.9", "", "banned", c)
	l.LoginFailedAgain("phone", "", c)
	l.LoginFailedAgain("", "PLAIN", c)
	l.LoginFailedMethod("PLAIN", c)
	want := []string{
		"info LOGIN REFUSED, user=testuser, ip=[::ffff:192.0.2.7], port=[43894], reason=limit",
		"info LOGIN REFUSED, user=testuser, ip=[::ffff:192.0.2.7], port=[43894], reason=privacyrequired",
		"info LOGIN REFUSED, method=PLAIN, ip=[::ffff:192.0.2.7], port=[43894], reason=cancelled",
		"info LOGIN REFUSED, user=bob.. ip=.10.9.9.9, ip=[::ffff:192.0.2.7], port=[43894], reason=banned",
		"info LOGIN FAILED AGAIN, user=phone, ip=[::ffff:192.0.2.7], port=[43894]",
		"info LOGIN FAILED AGAIN, method=PLAIN, ip=[::ffff:192.0.2.7], port=[43894]",
		// courier's own, for comparison (shared/reference/courier.md row 5)
		"info LOGIN FAILED, method=PLAIN, ip=[::ffff:192.0.2.7], port=[43894]",
	}
	got := mem.Lines()
	if len(got) != len(want) {
		t.Fatalf("got %d lines %q", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}
