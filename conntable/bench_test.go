package conntable

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// BenchmarkInsertRemove: one entry in and out of a table holding 100,000
// entries, from both cores. Run: go test -bench . -benchmem ./conntable/
func BenchmarkInsertRemove(b *testing.B) {
	tb, _ := New(Config{Max: 200_000}, nil)
	for i := 0; i < 100_000; i++ {
		e, _ := tb.Insert(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1000), local, nil)
		e.SetState(Established)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		port := uint16(0)
		for pb.Next() {
			port++
			e, err := tb.Insert(netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(port)}), port), local, nil)
			if err != nil {
				b.Fatal(err)
			}
			tb.Remove(e)
		}
	})
}

// TestMemoryPerEntry reports the heap per table entry.
// Run: go test -run MemoryPerEntry -v ./conntable/
func TestMemoryPerEntry(t *testing.T) {
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tb, _ := New(Config{Max: n}, nil)
	kill := func(Reason) {}
	for i := 0; i < n; i++ {
		if _, err := tb.Insert(netip.MustParseAddrPort(fmt.Sprintf("10.%d.%d.%d:1000", i>>16, byte(i>>8), byte(i))), local, kill); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("conntable: %.0f bytes per entry, buckets included (%d entries)", per, tb.Count())
	if per > 400 {
		t.Errorf("%.0f bytes per entry", per)
	}
	runtime.KeepAlive(tb)
}
