package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"imapgate/limiter"
)

// BenchmarkRealRedisAdmitRelease: one admission and its release through
// the limiter and a real Redis (integration/redis/setup.sh start), from
// 8 goroutines, with this process's CPU per pair. Run:
//
//	go test -run XXX -bench AdmitRelease ./cluster/
func BenchmarkRealRedisAdmitRelease(b *testing.B) {
	env, err := os.ReadFile("/tmp/imapgate-redis/env")
	if err != nil {
		b.Skip("run integration/redis/setup.sh start")
	}
	url := ""
	for _, l := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(l, "REDIS_URL="); ok {
			url = v
		}
	}
	p := defaultPolicy()
	p.Limits.RatePerIP, p.Limits.RatePerPrefix = limiter.Rate{}, limiter.Rate{}
	l, _ := limiter.New(p, limiter.Options{RateEntries: 1 << 16})
	c, err := New(Options{URL: url, Node: "bench", KeyPrefix: fmt.Sprintf("imapgate-b%d", time.Now().UnixNano())})
	if err != nil {
		b.Fatal(err)
	}
	c.Start(l)
	defer c.Close()
	if !l.SharedUp() {
		b.Fatal("not up")
	}
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
