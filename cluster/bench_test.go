package cluster

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"imapgate/internal/redistest"
	"imapgate/limiter"
)

// BenchmarkRealRedisAdmitRelease: one admission and its release through
// the limiter and a real Redis (integration/redis/setup.sh start), from
// 8 goroutines, with this process's CPU per pair. Run:
//
//	go test -run XXX -bench AdmitRelease ./cluster/
func BenchmarkRealRedisAdmitRelease(b *testing.B) {
	c, l := benchNode(b)
	defer c.Close()
	var n atomic.Uint32
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.SetParallelism(4) // 8 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			now := time.Now()
			t, d := l.Admit(a, now)
			d = t.Confirm(context.Background(), now, d)
			if d.Refused {
				b.Fatal("refused", d.Reason)
			}
			t.Release()
		}
	})
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(float64(cpu.Microseconds()), "cpu-µs/op")
	if _, _, fails := l.SharedStats(); fails > 0 {
		b.Fatalf("%d calls failed", fails)
	}
}

// BenchmarkRealRedisAdmitLatency: admissions one at a time (one
// goroutine, as a quiet server sees them), each timed from the call of
// Ticket.Confirm to its answer; reports p50 and p99 in µs and the
// Redis server's own time per EVALSHA (INFO commandstats). Run it with
// Redis and the test on known cores, e.g.
//
//	taskset -c 0 go test -run XXX -bench AdmitLatency ./cluster/
func BenchmarkRealRedisAdmitLatency(b *testing.B) {
	c, l := benchNode(b)
	defer c.Close()
	calls0, usec0 := evalshaStats(b, c)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		now := time.Now()
		t, d := l.Admit(a, now)
		start := time.Now()
		d = t.Confirm(context.Background(), now, d)
		lat = append(lat, time.Since(start))
		if d.Refused {
			b.Fatal("refused", d.Reason)
		}
		t.Release()
	}
	b.StopTimer()
	calls1, usec1 := evalshaStats(b, c)
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	if calls1 > calls0 {
		b.ReportMetric((usec1-usec0)/float64(calls1-calls0), "redis-µs/evalsha")
	}
}

// evalshaStats reads Redis's count of EVALSHA calls and their total µs.
func evalshaStats(b *testing.B, c *Cluster) (calls int64, usec float64) {
	cl, _ := c.conn()
	s, err := cl.Do(context.Background(), cl.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "cmdstat_evalsha:calls="); ok {
			n, rest, _ := strings.Cut(rest, ",usec=")
			u, _, _ := strings.Cut(rest, ",")
			calls, _ = strconv.ParseInt(n, 10, 64)
			usec, _ = strconv.ParseFloat(u, 64)
		}
	}
	return calls, usec
}

// benchURL is setup.sh's REDIS_URL, or the key of its env file that
// IMAPGATE_REDIS_BENCH names (REDIS_UNIX_URL: the same Redis through its
// unix socket).
func benchURL(b *testing.B) string {
	url, err := redistest.Lookup(cmp.Or(os.Getenv("IMAPGATE_REDIS_BENCH"), "REDIS_URL"))
	if err != nil {
		b.Skip(err)
	}
	return url
}

// benchNode starts a node on the Redis of setup.sh, with rates off, and
// its limiter on the shared limits.
func benchNode(b *testing.B) (*Cluster, *limiter.Limiter) {
	url := benchURL(b)
	p := defaultPolicy()
	p.Limits.RatePerIP, p.Limits.RatePerPrefix = limiter.Rate{}, limiter.Rate{}
	l, _ := limiter.New(p, limiter.Options{RateEntries: 1 << 16})
	c, err := New(Options{URL: url, Node: "bench", KeyPrefix: fmt.Sprintf("imapgate-b%d", time.Now().UnixNano())})
	if err != nil {
		b.Fatal(err)
	}
	c.Start(l)
	if !l.SharedUp() {
		c.Close()
		b.Fatal("not up")
	}
	return c, l
}
