// Package leaktest fails a package's tests when goroutines running
// imapgate's code outlive them (tailscale's tstest.ResourceCheck, for a
// whole test binary).
package leaktest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs m's tests, then, if they passed (and not with -short), waits
// up to 5 s for every goroutine running imapgate's code to end, and fails
// with their stacks if some do not. Call it as TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 && !testing.Short() {
		if leaked := Goroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines leaked by the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// Goroutines returns the stacks of goroutines still running imapgate's
// code after d (TestMain's own aside), or "" as soon as there are none.
func Goroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		var ours []string
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "imapgate/") && !strings.Contains(g, "TestMain") && !strings.Contains(g, "imapgate/internal/leaktest.") {
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
