package kernel

import (
	"net/netip"
	"testing"
	"time"

	"imapgate/limiter"
)

// fake is a backend in memory.
type fake struct {
	els     map[netip.Prefix]time.Duration
	missing bool
}

func (f *fake) ensure() (bool, error) {
	if f.missing {
		f.missing = false
		f.els = map[netip.Prefix]time.Duration{}
		return true, nil
	}
	return false, nil
}
func (f *fake) add(p netip.Prefix, d time.Duration) error { f.els[p] = d; return nil }
func (f *fake) del(p netip.Prefix) error                  { delete(f.els, p); return nil }
func (f *fake) counters() (uint64, uint64, error)         { return 0, 0, nil }
func (f *fake) close() error                              { return nil }

func newFake(o Options) (*Kernel, *fake) {
	f := &fake{els: map[netip.Prefix]time.Duration{}}
	if o.MaxTracked == 0 {
		o.MaxTracked = 1 << 16
	}
	return newKernel(o, f), f
}

var flooder = netip.MustParseAddr("192.0.2.66")

// An honest client over its limit, refused a few times a second for a long
// while, never escalates; a burst of more than 100 in 10 s does, for 30 s,
// then 60 s, 120 s, ... up to 10 min, and a long quiet spell forgives.
func TestEscalationThresholdAndGrowth(t *testing.T) {
	k, f := newFake(Options{Escalation: DefaultEscalation})
	t0 := time.Unix(1_000_000, 0)
	honest := netip.MustParseAddr("192.0.2.7")
	for i := 0; i < 3600; i++ { // 5 a second for 12 minutes
		k.Refused(honest, t0.Add(time.Duration(i)*200*time.Millisecond))
	}
	k.Sync(t0.Add(12 * time.Minute))
	if len(f.els) != 0 {
		t.Fatalf("an honest client at its limit escalated: %v", f.els)
	}
	now := t0.Add(time.Hour)
	var got []time.Duration
	for round := 0; round < 7; round++ {
		for i := 0; i <= 100; i++ {
			k.Refused(flooder, now)
		}
		k.Sync(now)
		got = append(got, f.els[netip.PrefixFrom(flooder, 32)].Round(time.Second))
		now = now.Add(got[len(got)-1] + time.Second) // the drop ends; it floods again
		k.Sync(now)
	}
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("drops %v, want %v", got, want)
		}
	}
	// Refusals counted while it is dropped do not escalate it again.
	now = now.Add(41 * time.Minute) // quiet for 4 × the longest drop
	for i := 0; i <= 100; i++ {
		k.Refused(flooder, now)
	}
	k.Sync(now)
	if d := f.els[netip.PrefixFrom(flooder, 32)].Round(time.Second); d != 30*time.Second {
		t.Fatalf("after a long quiet spell: %v, want 30s again", d)
	}
}

// Exempt addresses never enter, neither by escalation nor by a ban; a user
// ban never does either; IPv4-mapped bans land in the IPv4 set.
func TestNeverInTheSets(t *testing.T) {
	exempt := netip.MustParseAddr("192.0.2.10")
	now := time.Unix(1_000_000, 0)
	bans := []limiter.Ban{
		{Key: netip.PrefixFrom(exempt, 32), Until: now.Add(time.Hour)},
		{Key: netip.Prefix{}, Until: now.Add(time.Hour)}, // no address: a user's ban
		{Key: netip.MustParsePrefix("::ffff:192.0.2.11/128"), Until: now.Add(time.Hour)},
	}
	k, f := newFake(Options{Escalation: DefaultEscalation, Exempt: func(a netip.Addr) bool { return a == exempt },
		Bans: func(time.Time) []limiter.Ban { return bans }})
	for i := 0; i < 500; i++ {
		k.Refused(exempt, now)
	}
	k.Sync(now)
	if len(f.els) != 1 || f.els[netip.MustParsePrefix("192.0.2.11/32")] == 0 {
		t.Fatalf("elements %v", f.els)
	}
	// A table an administrator flushed is made again with its members.
	f.missing = true
	k.Sync(now.Add(time.Second))
	if len(f.els) != 1 || k.Stats().Recreated != 1 {
		t.Fatalf("after recreation: %v", f.els)
	}
}

func TestRangeEnd(t *testing.T) {
	for _, tt := range []struct{ p, end string }{
		{"192.0.2.7/32", "192.0.2.8"},
		{"192.0.2.0/24", "192.0.3.0"},
		{"192.0.255.255/32", "192.1.0.0"},
		{"10.0.0.0/7", "12.0.0.0"},
		{"2001:db8::/64", "2001:db8:0:1::"},
		{"2001:db8::ff/128", "2001:db8::100"},
	} {
		b, ok := rangeEnd(netip.MustParsePrefix(tt.p))
		got, _ := netip.AddrFromSlice(b)
		if !ok || got.String() != tt.end {
			t.Errorf("%s: end %v %v, want %s", tt.p, got, ok, tt.end)
		}
	}
	if _, ok := rangeEnd(netip.MustParsePrefix("255.255.255.255/32")); ok {
		t.Error("the last address has an end")
	}
}

// Only address and network bans reach the kernel: a user+address ban
// must never drop an office's whole address.
func TestUserBansStayOutOfTheKernel(t *testing.T) {
	a := netip.MustParsePrefix("192.0.2.7/32")
	if !kernelBan(limiter.Ban{Key: a}) {
		t.Error("an address ban is not a kernel ban")
	}
	if kernelBan(limiter.Ban{Key: a, User: "alice"}) {
		t.Error("a user ban went to the kernel")
	}
	if kernelBan(limiter.Ban{}) {
		t.Error("a ban without a key went to the kernel")
	}
}
