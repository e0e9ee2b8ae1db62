package proxy_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the package if goroutines outlive the tests: every
// session, relay and reaper goroutine must end when its server closes.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && !testing.Short() {
		if leaked := waitForGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitForGoroutines returns the stacks of goroutines still running after d
// that belong to imapgate, or "" once there are none.
func waitForGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		var ours []string
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "imapgate/") && !strings.Contains(g, "TestMain") && !strings.Contains(g, "waitForGoroutines") {
				ours = append(ours, g)
			}
		}
		if len(ours) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(ours, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
