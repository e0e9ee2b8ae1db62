package throttle

import (
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	r := New(5*time.Second, 2)
	t0 := time.Now()
	var oks int
	for i := 0; i < 5; i++ {
		if ok, _ := r.Allow(t0); ok {
			oks++
		}
	}
	if oks != 2 {
		t.Fatalf("%d allowed in the window, want 2", oks)
	}
	if ok, sup := r.Allow(t0.Add(5 * time.Second)); !ok || sup != 3 {
		t.Fatalf("next window: ok=%v suppressed=%d, want true 3", ok, sup)
	}
}

// Flush gives the count no later message carried, once its interval has
// passed, and only once.
func TestFlush(t *testing.T) {
	r := New(5*time.Second, 2)
	t0 := time.Now()
	for i := 0; i < 5; i++ {
		r.Allow(t0)
	}
	if n := r.Flush(t0.Add(time.Second)); n != 0 {
		t.Fatalf("flushed %d inside the interval", n)
	}
	if n := r.Flush(t0.Add(5 * time.Second)); n != 3 {
		t.Fatalf("flushed %d after the interval, want 3", n)
	}
	if n := r.Flush(t0.Add(20 * time.Second)); n != 0 {
		t.Fatalf("flushed %d twice", n)
	}
	if ok, suppressed := r.Allow(t0.Add(21 * time.Second)); !ok || suppressed != 0 {
		t.Fatalf("after a flush: ok %v, suppressed %d (reported twice)", ok, suppressed)
	}
}
