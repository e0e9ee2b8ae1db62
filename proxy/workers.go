package proxy

import (
	"sync/atomic"
	"time"
)

// workers runs the sessions' shared-verdict calls (confirm: one Redis
// round trip each) on goroutines kept between calls. A goroutine of its
// own per call started on a small stack and grew it inside the Redis
// client on every call; stack growth copies and walks the frames, and in
// imapbench's cluster scenario that was about 17 µs of CPU per admitted
// session (`-cpuprofile`, 8,000 sessions: runtime.newstack under the
// verdict goroutine, 0.09 s of a replica's 5.48 s; none with workers). A
// kept goroutine's stack stays grown until the GC shrinks it.
//
// A job that cannot go to an idle worker at once starts a new one, so a
// call never waits for another; a worker idle for workerIdle, or past the
// server's stop, ends. Jobs recover their own panics.
type workers struct {
	jobs    chan func()     // unbuffered: a send succeeds only into an idle worker
	stop    <-chan struct{} // the server's life.stop
	idleFor time.Duration   // workerIdle; tests shorten it
	alive   atomic.Int64    // workers running
	started atomic.Int64    // workers started so far
}

// workerIdle is how long an idle worker waits for a job before it ends:
// long enough to outlast the gaps of a steady load, short enough that a
// burst's workers do not stay.
const workerIdle = 2 * time.Second

func newWorkers(stop <-chan struct{}) *workers {
	return &workers{jobs: make(chan func()), stop: stop, idleFor: workerIdle}
}

// run runs job on an idle worker, or on a new one if none is idle.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
	default:
		w.alive.Add(1)
		w.started.Add(1)
		go w.work(job)
	}
}

func (w *workers) work(job func()) {
	defer w.alive.Add(-1)
	idle := time.NewTimer(w.idleFor)
	defer idle.Stop()
	for {
		job()
		idle.Reset(w.idleFor)
		select {
		case job = <-w.jobs:
		case <-idle.C:
			return
		case <-w.stop:
			return
		}
	}
}
