package limiter

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// addrN is the n-th of many distinct addresses (IPv4 for even n, IPv6 for
// odd), spread over many /24s and /64s.
func addrN(n uint32) netip.Addr {
	if n%2 == 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], 0x0a000000|n)
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	b[0], b[1] = 0x20, 0x01
	binary.BigEndian.PutUint32(b[4:], n)
	b[15] = 1
	return netip.AddrFrom16(b)
}

// BenchmarkAdmit1M: one admission decision (all limits on: rates per
// address and prefix, ban check, per-address, per-prefix, pre-login and
// global counts) plus its release, with 1 M addresses tracked in the rate
// tables. Run: go test -bench Admit1M -benchmem ./limiter/
func BenchmarkAdmit1M(b *testing.B) { benchmarkAdmit(b, 0) }

// BenchmarkAdmit1MKnownGood: the same with the known-good tier in use, so
// every admission looks up its address and prefix: 16,384 of the 1 M
// addresses (and their prefixes) are known-good.
// Run: go test -bench Admit1M -benchmem ./limiter/
func BenchmarkAdmit1MKnownGood(b *testing.B) { benchmarkAdmit(b, 1<<14) }

func benchmarkAdmit(b *testing.B, good uint32) {
	const tracked = 1 << 20
	p := DefaultPolicy()
	p.Limits.MaxConnections = 1 << 30
	p.Limits.RatePerIP = Rate{Burst: 1 << 20, Per: time.Second}
	p.Limits.RatePerPrefix = Rate{Burst: 1 << 20, Per: time.Second}
	l, _ := New(p, Options{RateEntries: tracked})
	now := time.Now()
	for i := uint32(0); i < tracked; i++ {
		t, _ := l.Admit(addrN(i), now)
		if i%(tracked/max(good, 1)) == 0 && good > 0 {
			for _, u := range []string{"ann", "bea", "cid"} {
				t.LoginSucceeded(now, u)
			}
		}
		t.Release()
	}
	if n := l.goodIP.Len(); good > 0 && n < int(good)*9/10 {
		b.Fatalf("%d addresses remembered, want %d", n, good)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(0)
		for pb.Next() {
			i = i*1664525 + 1013904223
			t, d := l.Admit(addrN(i%tracked), now)
			if d.Refused {
				b.Fatal("refused", d.Reason)
			}
			t.Release()
		}
	})
}

// TestMemoryPerTrackedAddress reports the heap per address remembered by
// the rate tables (an address and its prefix each hold one key).
// Run: go test -run MemoryPerTracked -v ./limiter/
func TestMemoryPerTrackedAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 1 M entries")
	}
	const n = 1 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rt := newRateTable(n)
	now := time.Now()
	for i := uint32(0); i < n; i++ {
		rt.allow(addrKey(addrN(i)), Rate{Burst: 10, Per: time.Minute}, now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(rt.Len())
	t.Logf("rate state: %.0f bytes per tracked key (%d keys)", per, rt.Len())
	if per > 150 {
		t.Errorf("%.0f bytes per tracked address, budget 150", per)
	}
	runtime.KeepAlive(rt)
}

// BenchmarkKnownGoodLookup: the lookup Admit adds for the known-good tier,
// one address, in a table holding 16,384 addresses.
// Run: go test -bench KnownGoodLookup -benchmem ./limiter/
func BenchmarkKnownGoodLookup(b *testing.B) {
	g := newGoodTable(1 << 16)
	kg := DefaultPolicy().KnownGood
	n := time.Now().UnixNano()
	for i := uint32(0); i < 1<<14; i++ {
		for _, u := range []uint64{1, 2, 3} {
			g.login(addrKey(addrN(i)), u<<32, n, &kg)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	i, hits := uint32(0), 0
	for b.Loop() {
		i = i*1664525 + 1013904223
		if g.good(addrKey(addrN(i%(1<<15))), n) {
			hits++
		}
	}
	if hits == 0 {
		b.Fatal("no hits")
	}
}
