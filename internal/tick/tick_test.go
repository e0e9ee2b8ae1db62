package tick

import (
	"testing"
	"time"
)

// Every calls fn on each tick and returns once stop is closed.
func TestEvery(t *testing.T) {
	stop := make(chan struct{})
	calls := make(chan time.Time, 16)
	done := make(chan struct{})
	go func() { Every(stop, time.Millisecond, func(now time.Time) { calls <- now }); close(done) }()
	first, second := <-calls, <-calls
	if !second.After(first) {
		t.Fatalf("ticks %v then %v", first, second)
	}
	close(stop)
	<-done
}
