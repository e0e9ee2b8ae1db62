package cluster

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"imapgate/limiter"
)

func TestLimitsSummaryAndDiff(t *testing.T) {
	p := defaultPolicy()
	p.Limits.MaxPerIP = 2
	p.Limits.RatePerIP = limiter.Rate{Burst: 10, Per: time.Minute}
	mine := limitsSummary(&p)
	q := p
	q.Limits.MaxPerIP = 5
	q.Overrides = []limiter.Override{{Prefix: netip.MustParsePrefix("192.0.2.0/24")}}
	other := limitsSummary(&q)
	if d := limitsDiff(mine, mine); d != nil {
		t.Errorf("the same limits differ: %v", d)
	}
	want := []string{"max_per_ip=5 (here 2)", "overrides=192.0.2.0/24 (here none)"}
	if d := limitsDiff(mine, other); !reflect.DeepEqual(d, want) {
		t.Errorf("limitsDiff = %q, want %q", d, want)
	}
	// The other way round: what only this node has is named too.
	want = []string{"max_per_ip=2 (here 5)", "overrides=none (here 192.0.2.0/24)"}
	if d := limitsDiff(other, mine); !reflect.DeepEqual(d, want) {
		t.Errorf("limitsDiff reversed = %q, want %q", d, want)
	}
}
