package proxy

import (
	"testing"
	"time"
)

// TestWorkersReuseNeverQueueAndEnd checks the verdict workers: a job
// never waits behind a running one, an idle worker takes the next job
// instead of a new goroutine, and workers end when idle and at the
// server's stop.
func TestWorkersReuseNeverQueueAndEnd(t *testing.T) {
	stop := make(chan struct{})
	w := newWorkers(stop)
	w.idleFor = time.Hour // only the stop ends these

	// A blocked job: the next one runs meanwhile, on a second worker.
	block, second := make(chan struct{}), make(chan struct{})
	w.run(func() { <-block })
	w.run(func() { close(second) })
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("a job waited behind a running one")
	}
	close(block)

	// Jobs one after another, each once the last has returned: they go to
	// the idle workers. (A job sent in the instant between a worker's
	// return and its wait starts a worker more, so a few are allowed;
	// without reuse every job would start one.)
	before := w.started.Load()
	for i := 0; i < 50; i++ {
		done := make(chan struct{})
		w.run(func() { close(done) })
		<-done
		time.Sleep(time.Millisecond)
	}
	if n := w.started.Load() - before; n > 10 {
		t.Errorf("%d workers started for 50 jobs run one after another", n)
	}

	// At the server's stop they end, however long their idle wait.
	for i := 0; i < 3; i++ {
		w.run(func() { time.Sleep(10 * time.Millisecond) })
	}
	close(stop)
	waitWorkers(t, w, "after the server's stop")

	// Idle workers end after idleFor.
	short := newWorkers(make(chan struct{}))
	short.idleFor = 20 * time.Millisecond
	short.run(func() {})
	short.run(func() {})
	waitWorkers(t, short, "idle past idleFor")
}

// waitWorkers waits up to 5 s for w's workers to end; why says why they
// should have.
func waitWorkers(t *testing.T, w *workers, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for w.alive.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still running, %s", w.alive.Load(), why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
