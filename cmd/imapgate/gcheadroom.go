package main

import (
	"math"
	"os"
	"runtime"
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
// goroutines alive hold nonHeap bytes of stack. The limit is compared with
// all of the runtime's memory: leaving the stacks out, a flood of ten
// thousand connections waiting for their first byte (a goroutine and its
// stack each) put the limit below what was in use, and the collector ran
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
	// Besides the live heap, the stacks of the goroutines alive now, at
	// the usual 8 KiB each (and never more than the stack space there is):
	// stacks freed by goroutines gone wait in pools the collector returns
	// to the heap, and counting them, or the runtime's metadata, would
	// keep that much more resident (2 KiB more per idle session, measured).
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	tick := time.NewTicker(gcHeadroomPeriod)
	defer tick.Stop()
	defer debug.SetMemoryLimit(math.MaxInt64)
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 && sample[1].Value.Kind() == metrics.KindUint64 {
			stacks := min(sample[1].Value.Uint64(), uint64(runtime.NumGoroutine())*8<<10)
			debug.SetMemoryLimit(gcMemoryLimit(sample[0].Value.Uint64(), stacks))
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
