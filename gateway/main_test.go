package gateway

import (
	"testing"

	"imapgate/internal/leaktest"
)

// TestMain fails the package if goroutines outlive the tests: the
// conntrack watch, the kernel path's and the parts' own must end at Close.
func TestMain(m *testing.M) { leaktest.Main(m) }
