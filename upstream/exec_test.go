package upstream

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
)

// When wrapping the socketpair fails (EMFILE at the worst moment), the
// exec upstream releases both of its descriptors, each by its one owner,
// and leaves every other descriptor of the process open.
func TestExecUpstreamFileConnFailureReleasesItsOwn(t *testing.T) {
	old := fileConn
	fileConn = func(*os.File) (net.Conn, error) { return nil, errors.New("too many open files") }
	defer func() { fileConn = old }()
	before := openFDs(t)
	u := &Exec{argv: []string{"/bin/false", "/bin/false", "Maildir"}}
	for range 20 {
		if _, err := u.Dial(context.Background(), Client{}); err == nil {
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

// imaplogin's failure lines are recognised with or without courierlogger's
// priority prefix, and nothing else is.
func TestIsLoginFailed(t *testing.T) {
	for line, want := range map[string]bool{
		"INFO: LOGIN FAILED, user=testuser, ip=[::ffff:127.0.0.1], port=[43894]":     true,
		"LOGIN FAILED, method=PLAIN, ip=[::ffff:127.0.0.1], port=[52788]":            true,
		"INFO:LOGIN FAILED, user=x, ip=[::1], port=[1]":                              true,
		"INFO: LOGIN, user=testuser, ip=[::ffff:127.0.0.1], port=[1], protocol=IMAP": false,
		"INFO: LOGIN, user=LOGIN FAILED, , ip=[::1], port=[1], protocol=IMAP":        false,
		"ERR: authentication error: Permission denied":                               false,
		"LOGOUT, user=a:LOGIN FAILED, ip=[::1]":                                      false,
		"":                                                                           false,
	} {
		if got := isLoginFailed(line); got != want {
			t.Errorf("isLoginFailed(%q) = %v, want %v", line, got, want)
		}
	}
}
