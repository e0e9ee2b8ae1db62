package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"imapgate/limiter"
)

// One Release call with a batch that names some keys several times and
// more than 16 keys (releaseArgs' map), a user's place and a re-spend:
// real Redis holds exactly the places not released, and the node's key
// set exactly the keys it still counts in.
func TestRealRedisReleaseBatch(t *testing.T) {
	url := redisURL(t)
	p := defaultPolicy()
	p.Limits.RatePerIP, p.Limits.RatePerPrefix = limiter.Rate{}, limiter.Rate{}
	l, err := limiter.New(p, limiter.Options{RateEntries: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{URL: url, Node: "n1", KeyPrefix: fmt.Sprintf("imapgate-rb%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	c.Start(l)
	defer c.Close()
	if !l.SharedUp() {
		t.Fatal("not up")
	}
	ctx := context.Background()
	now := time.Now()
	var qs []*limiter.SharedRelease
	for i := 0; i < 12; i++ {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i/2)}) // 6 addresses, 2 sessions each
		tk, d := l.Admit(a, now)
		if d = tk.Confirm(ctx, now, d); d.Refused {
			t.Fatalf("refused: %+v", d)
		}
		if i < 11 {
			qs = append(qs, &limiter.SharedRelease{Addr: a, Prefix: netip.PrefixFrom(a, 24).Masked(), Total: true, IP: true, InPrefix: true, Now: now})
		}
	}
	// 11 more releases of places never taken in 11 other /24s, 2 of them
	// with a user: they drop to nothing (a count at 0 or below goes).
	for i := 0; i < 11; i++ {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i), 1})
		q := &limiter.SharedRelease{Addr: a, Prefix: netip.PrefixFrom(a, 24).Masked(), InPrefix: true, Now: now}
		if i < 2 {
			q.User = "u"
		}
		qs = append(qs, q)
	}
	qs = append(qs, &limiter.SharedRelease{Addr: netip.MustParseAddr("192.0.2.200"), Prefix: netip.MustParsePrefix("192.0.2.0/24"),
		RespendIP: int64(time.Second), Now: now})
	if err := c.Release(ctx, qs); err != nil {
		t.Fatal(err)
	}
	cl, _ := c.conn()
	hget := func(k string) string {
		v, _ := cl.Do(ctx, cl.B().Hget().Key(k).Field("n1").Build()).ToString()
		return v
	}
	if v := hget(c.k.total); v != "1" {
		t.Fatalf("total %q, want 1", v)
	}
	if v := hget(c.prefixKey(netip.MustParsePrefix("192.0.2.0/24"))); v != "1" {
		t.Fatalf("prefix count %q, want 1", v)
	}
	if v := hget(c.addrKey(netip.MustParseAddr("192.0.2.105"))); v != "1" {
		t.Fatalf("192.0.2.105 %q, want 1", v)
	}
	members, err := cl.Do(ctx, cl.B().Smembers().Key(c.k.nodeSet("n1")).Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{c.k.total: true, c.prefixKey(netip.MustParsePrefix("192.0.2.0/24")): true,
		c.addrKey(netip.MustParseAddr("192.0.2.105")): true}
	if len(members) != len(want) {
		t.Fatalf("node key set %v, want %v", members, want)
	}
	for _, m := range members {
		if !want[m] {
			t.Fatalf("node key set %v, want %v", members, want)
		}
	}
	tat, err := cl.Do(ctx, cl.B().Get().Key(c.rateAddrKey(netip.MustParseAddr("192.0.2.200"))).Build()).AsInt64()
	if err != nil || tat < now.UnixMicro()+int64(time.Second/time.Microsecond) {
		t.Fatalf("re-spent rate: %d (%v), want at least now + 1 s", tat, err)
	}
}
