package main

import (
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The Go collector lets the heap grow to twice what was live at the last
// collection (GOGC=100) before collecting again, and the pages stay
// resident. With thousands of idle IMAP sessions the live heap is tens of
// megabytes of TLS state, and that doubling was half of imapgate's memory
// per idle session. gcHeadroom caps the growth instead: a soft memory limit
// of live + max(gcHeadroomFloor, live × gcHeadroomShare), recomputed every
// second. While the live heap is small (a few busy sessions) the floor is
// above GOGC's doubling and nothing changes; with a large live heap the
// collector runs a little more often and the resident set stays near what
// is live. The runtime's own guard (GC at most about half the CPU under a
// memory limit) still applies. An operator's GOMEMLIMIT or GOGC=off
// switches this off.
const (
	gcHeadroomFloor  = 32 << 20
	gcHeadroomShare  = 0.25
	gcHeadroomPeriod = time.Second
)

// gcMemoryLimit is the soft limit for a live heap of live bytes when the
// runtime holds nonHeap bytes besides the heap (goroutine stacks above
// all, and its own metadata). The limit is compared with all of the
// runtime's memory: leaving the stacks out, a flood of ten thousand
// connections waiting for their first byte (a goroutine and its stack
// each) put the limit below what was in use, and the collector ran
// without pause, up to half the CPU.
func gcMemoryLimit(live, nonHeap uint64) int64 {
	headroom := max(uint64(gcHeadroomFloor), uint64(float64(live)*gcHeadroomShare))
	base := live + nonHeap
	if base < live || base > math.MaxInt64-headroom {
		return math.MaxInt64
	}
	return int64(base + headroom)
}

// gcHeadroomWanted reports whether the operator left the collector's
// settings to imapgate.
func gcHeadroomWanted() bool {
	return os.Getenv("GOMEMLIMIT") == "" && os.Getenv("GOGC") != "off"
}

// runGCHeadroom adjusts the memory limit until stop is closed.
func runGCHeadroom(stop <-chan struct{}) {
	// What is not heap: total less heap objects (live or garbage), heap
	// space unused, free and released.
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	tick := time.NewTicker(gcHeadroomPeriod)
	defer tick.Stop()
	defer debug.SetMemoryLimit(math.MaxInt64)
	for {
		metrics.Read(sample)
		ok := true
		for _, x := range sample {
			ok = ok && x.Value.Kind() == metrics.KindUint64
		}
		if ok {
			v := func(i int) uint64 { return sample[i].Value.Uint64() }
			heap := v(2) + v(3) + v(4) + v(5)
			nonHeap := uint64(0)
			if v(1) > heap {
				nonHeap = v(1) - heap
			}
			debug.SetMemoryLimit(gcMemoryLimit(v(0), nonHeap))
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
