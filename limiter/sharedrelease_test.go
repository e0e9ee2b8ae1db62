package limiter

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
)

// oneOfTwoReleased: a node with max_per_ip 2 admitted two sessions from
// addr a and released the first; its release is queued. held is the
// second.
func oneOfTwoReleased(t *testing.T, a string) (f *fakeShared, n *Limiter, ip netip.Addr, held *Ticket) {
	p := unlimited()
	p.Limits.MaxPerIP = 2
	f = newFake()
	n = sharedNodes(t, f, p, "n1")[0]
	t1, _ := admitShared(n, addr(a), t0)
	held, _ = admitShared(n, addr(a), t0)
	t1.Release()
	return f, n, addr(a), held
}

// Releases within one window go in one Release call, each with the places
// it held; nothing is sent before the window passes, and the session's
// Release returns at once.
func TestSharedReleaseBatchContent(t *testing.T) {
	p := unlimited()
	p.Limits.MaxPerIP = 4
	f := newFake()
	n := sharedNodes(t, f, p, "n1")[0]
	a, b := addr("192.0.2.90"), addr("192.0.2.91")
	var held []*Ticket
	for _, x := range []netip.Addr{a, a, b} {
		tk, d := admitShared(n, x, t0)
		if tk == nil {
			t.Fatalf("refused: %+v", d)
		}
		held = append(held, tk)
	}
	calls := f.calls
	for _, tk := range held {
		tk.Release()
	}
	if f.calls != calls || f.sum("a:192.0.2.90") != 2 || n.Total() != 0 {
		t.Fatalf("before the window: %d calls, shared count %d, local total %d", f.calls-calls, f.sum("a:192.0.2.90"), n.Total())
	}
	if fired := f.fire(); fired != 1 {
		t.Fatalf("%d flushes scheduled, want 1", fired)
	}
	if f.calls != calls+1 || len(f.batches) != 1 || len(f.batches[0]) != 3 {
		t.Fatalf("%d calls, batches %+v; want one call with 3 releases", f.calls-calls, f.batches)
	}
	for i, r := range f.batches[0] {
		want := []netip.Addr{a, a, b}[i]
		if r.Addr != want || !r.Total || !r.IP || !r.InPrefix || r.User != "" {
			t.Fatalf("release %d: %+v, want %s with total, IP and prefix", i, r, want)
		}
	}
	if f.sum("total") != 0 || f.sum("a:192.0.2.90") != 0 || f.sum("a:192.0.2.91") != 0 {
		t.Fatalf("shared counts after the batch: total %d", f.sum("total"))
	}
}

// An admission on the node carries the releases queued there, applied
// before its check: a place freed on this node is never refused by the
// shared count, and the release costs no call of its own.
func TestSharedReleaseRidesOnAdmission(t *testing.T) {
	f, n, a, _ := oneOfTwoReleased(t, "192.0.2.92")
	calls := f.calls
	if tk, d := admitShared(n, a, t0); tk == nil {
		t.Fatalf("a place freed on this node refused: %+v", d)
	}
	if f.calls != calls+1 || len(f.admitRel) != 1 || f.admitRel[0].Addr != a {
		t.Fatalf("%d calls, releases with the admission %+v; want 1 call carrying 1", f.calls-calls, f.admitRel)
	}
	f.fire()
	if len(f.batches) != 0 || f.sum("a:192.0.2.92") != 2 {
		t.Fatalf("after the window: batches %+v, shared count %d (want none, 2)", f.batches, f.sum("a:192.0.2.92"))
	}
}

// A batch that fails degrades the node (Down once) and the counts it
// left, one too high, are corrected by the next Republish; nothing of the
// failed batch is sent again.
func TestSharedReleaseBatchFailureRepublished(t *testing.T) {
	f, n, _, t2 := oneOfTwoReleased(t, "192.0.2.93")
	f.fail = true
	f.fire()
	if n.SharedUp() || f.downs != 1 {
		t.Fatalf("up=%v after a failed batch, %d Downs", n.SharedUp(), f.downs)
	}
	if f.sum("a:192.0.2.93") != 2 {
		t.Fatalf("shared count %d, want 2 (the failed batch not applied)", f.sum("a:192.0.2.93"))
	}
	f.fail = false
	if err := n.Republish(context.Background(), t0); err != nil {
		t.Fatal(err)
	}
	if f.sum("a:192.0.2.93") != 1 || f.sum("total") != 1 {
		t.Fatalf("after Republish: address %d, total %d; want 1, 1", f.sum("a:192.0.2.93"), f.sum("total"))
	}
	f.fire()
	t2.Release()
	f.fire()
	if f.sum("a:192.0.2.93") != 0 || f.sum("total") != 0 || len(f.batches) != 1 {
		t.Fatalf("after the last release: address %d, total %d, batches %+v", f.sum("a:192.0.2.93"), f.sum("total"), f.batches)
	}
}

// Releases queued when the node degrades for another reason are dropped
// (the republished share has them), and a batch in flight is answered
// before Republish publishes, so none is applied twice.
func TestSharedReleaseNoDoubleAcrossRepublish(t *testing.T) {
	p := unlimited()
	f := newFake()
	n := sharedNodes(t, f, p, "n1")[0]
	a := addr("192.0.2.94")
	var held []*Ticket
	for i := 0; i < 4; i++ {
		tk, _ := admitShared(n, a, t0)
		held = append(held, tk)
	}
	// One release queued, then the node degrades (a heartbeat failed).
	held[0].Release()
	held[0].Release() // idempotent
	n.SharedFailed(errFake)
	f.fire()
	if len(f.batches) != 0 {
		t.Fatalf("dropped releases sent: %+v", f.batches)
	}
	if err := n.Republish(context.Background(), t0); err != nil {
		t.Fatal(err)
	}
	if f.sum("a:192.0.2.94") != 3 {
		t.Fatalf("after Republish: %d, want 3", f.sum("a:192.0.2.94"))
	}
	// A batch in flight while the node degrades and republishes.
	f.block, f.entered = make(chan struct{}), make(chan struct{}, 1)
	held[1].Release()
	done := make(chan struct{})
	go func() { f.fire(); close(done) }()
	<-f.entered
	n.SharedFailed(errFake)
	repub := make(chan error)
	go func() { repub <- n.Republish(context.Background(), t0) }()
	for waiting(n) == 0 {
		runtime.Gosched()
	}
	close(f.block)
	<-done
	if err := <-repub; err != nil {
		t.Fatal(err)
	}
	if f.badPublish {
		t.Fatal("Publish ran while a release batch was in flight")
	}
	if got := f.sum("a:192.0.2.94"); got != 2 || n.Total() != 2 {
		t.Fatalf("shared count %d, local %d; want 2, 2", got, n.Total())
	}
}

// An admission on the node while a batch with one of its releases is in
// flight: refused by the shared count that lacks the release, it asks
// again once the batch is answered, and is admitted.
func TestSharedReleaseInFlightNotRefused(t *testing.T) {
	f, n, a, _ := oneOfTwoReleased(t, "192.0.2.96")
	f.block, f.entered = make(chan struct{}), make(chan struct{}, 1)
	flushed := make(chan struct{})
	go func() { f.fire(); close(flushed) }()
	<-f.entered
	admitted := make(chan *Ticket)
	go func() { tk, _ := admitShared(n, a, t0); admitted <- tk }()
	for waiting(n) == 0 {
		runtime.Gosched()
	}
	close(f.block)
	<-flushed
	if tk := <-admitted; tk == nil {
		t.Fatal("a place freed on this node, its release in flight, was refused")
	}
	if f.sum("a:192.0.2.96") != 2 {
		t.Fatalf("shared count %d, want 2", f.sum("a:192.0.2.96"))
	}
	if _, d := n.Admit(a, t0); d.Refused {
		t.Fatal("the spurious first refusal was remembered")
	}
}

// waiting is how many callers wait for the batches in flight.
func waiting(l *Limiter) int {
	q := &l.cl.rq
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiters
}

// DetachShared (the node closing) sends the queued releases at once and
// leaves the node on local limits for good.
func TestSharedReleaseDetachFlushes(t *testing.T) {
	f, n, _, t2 := oneOfTwoReleased(t, "192.0.2.95")
	n.DetachShared()
	if len(f.batches) != 1 || len(f.batches[0]) != 1 || f.sum("a:192.0.2.95") != 1 {
		t.Fatalf("batches %+v, shared count %d; want the release sent", f.batches, f.sum("a:192.0.2.95"))
	}
	if n.SharedUp() || f.downs != 0 {
		t.Fatalf("up=%v, %d Downs after DetachShared", n.SharedUp(), f.downs)
	}
	if err := n.Republish(context.Background(), t0); err == nil || n.SharedUp() {
		t.Fatal("Republish after DetachShared succeeded")
	}
	t2.Release()
	f.fire()
	if len(f.batches) != 1 || n.Total() != 0 {
		t.Fatalf("a release after DetachShared reached the shared state: %+v", f.batches)
	}
}
