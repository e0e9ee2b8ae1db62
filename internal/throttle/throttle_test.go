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
