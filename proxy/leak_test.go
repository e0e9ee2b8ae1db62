package proxy_test

import (
	"net"
	"os"
	"testing"
	"time"

	"imapgate/internal/leaktest"
)

// TestMain fails the package if goroutines outlive the tests: every
// session, relay and reaper goroutine must end when its server closes.
func TestMain(m *testing.M) { leaktest.Main(m) }

// checkFDs fails t if the process holds more file descriptors once t's
// cleanups have run than when checkFDs was called: call it first, so that
// its check runs last (cleanups run in reverse order). Linux only (it
// counts /proc/self/fd); elsewhere it does nothing.
func checkFDs(t *testing.T) {
	t.Helper()
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close() // Go's own poller descriptors exist from here on
	}
	before := openFDs()
	if before < 0 {
		return
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := openFDs()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("file descriptors leaked: %d open, %d before the test", n, before)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// openFDs is the number of descriptors the process holds, or -1 if it
// cannot tell.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}
