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
