package kernel

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"imapgate/courierlog"
	"imapgate/limiter"
)

// fake is a backend in memory.
type fake struct {
	els            map[netip.Prefix]time.Duration
	kept           map[netip.Prefix]time.Duration
	missing        bool
	packets, bytes uint64 // the rules' counters
}

func (f *fake) ensure() (bool, error) {
	if f.missing {
		f.missing = false
		f.els = map[netip.Prefix]time.Duration{}
		f.kept = map[netip.Prefix]time.Duration{}
		return true, nil
	}
	return false, nil
}
func (f *fake) add(p netip.Prefix, d time.Duration) error  { f.els[p] = d; return nil }
func (f *fake) del(p netip.Prefix) error                   { delete(f.els, p); return nil }
func (f *fake) keep(p netip.Prefix, d time.Duration) error { f.kept[p] = d; return nil }
func (f *fake) unkeep(p netip.Prefix) error                { delete(f.kept, p); return nil }
func (f *fake) counters() (uint64, uint64, error)          { return f.packets, f.bytes, nil }
func (f *fake) close() error                               { return nil }

func newFake(o Options) (*Kernel, *fake) {
	f := &fake{els: map[netip.Prefix]time.Duration{}, kept: map[netip.Prefix]time.Duration{}}
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

// Enough addresses of one prefix escalated at once escalate the prefix:
// one element for the /24 replaces its addresses' (a set's intervals must
// not overlap), logged and counted as a prefix escalation; later
// escalations inside it add nothing. Refusals by a per-prefix limit alone,
// spread thinly over many addresses, escalate the prefix too. A prefix
// Exempt reports (a known-good network) never enters.
func TestPrefixEscalation(t *testing.T) {
	var logs []string
	k, f := newFake(Options{Escalation: DefaultEscalation,
		Log: func(_ courierlog.Priority, m string) { logs = append(logs, m) }})
	now := time.Unix(1_000_000, 0)
	for i := 1; i <= 6; i++ {
		for j := 0; j <= 100; j++ {
			k.Refused(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), now)
		}
		k.Sync(now)
	}
	net24 := netip.MustParsePrefix("192.0.2.0/24")
	if len(f.els) != 1 || f.els[net24] != 30*time.Second {
		t.Fatalf("elements %v, want the /24 alone for 30s", f.els)
	}
	if m := k.Members(now); len(m) != 1 || m[0].Reason != ReasonPrefixEscalation || k.Stats().Added[ReasonPrefixEscalation] != 1 {
		t.Fatalf("members %+v, stats %+v", m, k.Stats())
	}
	if want := "kernel: dropping new connections from 192.0.2.0/24 for 30s (4 of its addresses dropped, 0 refusals by per-prefix limits in 10s, level 1)"; !slices.Contains(logs, want) {
		t.Fatalf("log %q", logs)
	}

	k, f = newFake(Options{Escalation: DefaultEscalation})
	for i := 0; i <= 100; i++ {
		k.RefusedPrefix(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), now)
	}
	k.Sync(now)
	if len(f.els) != 1 || f.els[netip.MustParsePrefix("198.51.100.0/24")] != 30*time.Second {
		t.Fatalf("per-prefix limit refusals: elements %v", f.els)
	}

	good := netip.MustParsePrefix("203.0.113.0/24")
	k, f = newFake(Options{Escalation: DefaultEscalation, Exempt: func(a netip.Addr) bool { return good.Contains(a) && a == good.Addr() }})
	for i := 0; i <= 100; i++ {
		k.RefusedPrefix(netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}), now)
	}
	k.Sync(now)
	if len(f.els) != 0 {
		t.Fatalf("a known-good prefix entered: %v", f.els)
	}
}

// The keep sets hold the exempt and allow networks (without timeout, a
// network inside another once) and the known-good addresses outside them
// (until their known-good time ends); what leaves the lists leaves the
// sets at the next Sync.
func TestKeepSets(t *testing.T) {
	lists := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::ffff:192.0.2.5/128")}
	k, f := newFake(Options{Escalation: DefaultEscalation, Keep: func() []netip.Prefix { return lists }})
	now := time.Unix(1_000_000, 0)
	k.Good(netip.MustParseAddr("10.2.3.4"), now.Add(time.Hour))
	k.Good(netip.MustParseAddr("::ffff:198.51.100.9"), now.Add(time.Hour))
	k.Sync(now)
	want := map[netip.Prefix]time.Duration{
		netip.MustParsePrefix("10.0.0.0/8"):      0,
		netip.MustParsePrefix("192.0.2.5/32"):    0,
		netip.MustParsePrefix("198.51.100.9/32"): time.Hour,
	}
	if !maps.Equal(f.kept, want) {
		t.Fatalf("kept %v, want %v", f.kept, want)
	}
	lists = lists[1:]
	k.Sync(now.Add(2 * time.Hour)) // the known-good time is over too
	want = map[netip.Prefix]time.Duration{netip.MustParsePrefix("10.1.0.0/16"): 0, netip.MustParsePrefix("192.0.2.5/32"): 0}
	if !maps.Equal(f.kept, want) {
		t.Fatalf("kept %v, want %v", f.kept, want)
	}
}

// An escalation wakes Run, which syncs at once: the flooder is in the set
// long before Run's tick (an hour here) would come.
func TestEscalationSyncsWithoutWaitingForTheTick(t *testing.T) {
	k, _ := newFake(Options{Escalation: DefaultEscalation})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { k.Run(stop, time.Hour); close(done) }()
	defer func() { close(stop); <-done }()
	now := time.Now()
	for i := 0; i <= DefaultEscalation.Refusals; i++ {
		k.Refused(flooder, now)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, m := range k.Members(time.Now()) {
			if m.Prefix == netip.PrefixFrom(flooder, 32) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the escalation waited for Run's tick")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The drop counters never go back: when an administrator deletes the
// table, Sync makes it again with rules counting from zero, and what the
// old rules had counted stays in the totals.
func TestCountersSurviveATableMadeAgain(t *testing.T) {
	k, f := newFake(Options{})
	now := time.Unix(1_000_000, 0)
	f.packets, f.bytes = 5, 300
	k.Sync(now)
	if s := k.Stats(); s.Packets != 5 || s.Bytes != 300 {
		t.Fatalf("Stats %d/%d, want 5/300", s.Packets, s.Bytes)
	}
	f.packets, f.bytes, f.missing = 0, 0, true // deleted: made again from zero
	k.Sync(now.Add(time.Second))
	if s := k.Stats(); s.Packets != 5 || s.Bytes != 300 || s.Recreated != 1 {
		t.Fatalf("after the table was made again: %+v, want 5/300 and one re-creation", s)
	}
	f.packets, f.bytes = 2, 120
	if s := k.Stats(); s.Packets != 7 || s.Bytes != 420 {
		t.Fatalf("Stats %d/%d, want 7/420", s.Packets, s.Bytes)
	}
}

// An address dropped longer than the network drop that covers it comes
// back for what is left of its own drop when the network's ends; ctl bans
// lists it meanwhile (a fresh admin saw a /24's 30 s end an address's own
// 1-minute drop inside it).
func TestNetworkDropKeepsLongerAddressDrops(t *testing.T) {
	var lines []string
	k, f := newFake(Options{Escalation: DefaultEscalation, Log: func(_ courierlog.Priority, m string) { lines = append(lines, m) }})
	now := time.Unix(1_000_000, 0)
	long := netip.MustParseAddr("192.0.2.1")
	flood := func(a netip.Addr, at time.Time) {
		for range 101 {
			k.Refused(a, at)
		}
		k.Sync(at)
	}
	flood(long, now)                     // level 1: 30 s
	flood(long, now.Add(31*time.Second)) // level 2: 60 s, until +91 s
	longP := netip.PrefixFrom(long, 32)
	if f.els[longP] != time.Minute {
		t.Fatalf("elements %v, want %s for 1m", f.els, longP)
	}
	at := now.Add(32 * time.Second)
	for i := 2; i <= 6; i++ {
		flood(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), at)
	}
	net24 := netip.MustParsePrefix("192.0.2.0/24")
	if len(f.els) != 1 || f.els[net24] != 30*time.Second {
		t.Fatalf("elements %v, want the /24 alone for 30s", f.els)
	}
	if !slices.ContainsFunc(k.Members(at), func(m Member) bool { return m.Prefix == longP }) {
		t.Errorf("members %+v lack %s, dropped inside the /24", k.Members(at), longP)
	}
	// Another address escalated inside the /24 while it is dropped, for
	// longer than it: it comes in when the /24 goes too.
	k.put(netip.MustParsePrefix("192.0.2.9/32"), at.Add(5*time.Minute), at, ReasonEscalation, "test", false)
	// Both are logged when they happen, though the /24 stands for them
	// in the sets for now (a trial saw ctl bans list a drop the log never
	// named).
	for _, want := range []string{
		"kernel: dropping new connections from ::ffff:192.0.2.9 for 5m0s (test): inside 192.0.2.0/24, dropped already; on its own from when that ends",
		"kernel: dropping new connections from 192.0.2.0/24 for 30s",
	} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("no line %q in %q", want, lines)
		}
	}
	k.put(netip.MustParsePrefix("192.0.2.10/32"), at.Add(time.Second), at, ReasonEscalation, "short", false)
	if l := lines[len(lines)-1]; l != "kernel: ::ffff:192.0.2.10 (short) is inside 192.0.2.0/24, which is dropped already for as long" {
		t.Errorf("an escalation the /24 outlasts: last line %q", l)
	}
	n := len(lines)
	k.put(netip.MustParsePrefix("192.0.2.9/32"), at.Add(5*time.Minute), at, ReasonBan, "banned", false)
	if len(lines) != n {
		t.Errorf("a drop known already was logged again: %q", lines[n:])
	}
	k.Sync(now.Add(63 * time.Second)) // the /24 ended at +62 s (the kernel removes it by its timeout; the fake keeps it)
	if f.els[longP] != 28*time.Second || f.els[netip.MustParsePrefix("192.0.2.9/32")] != 4*time.Minute+29*time.Second {
		t.Fatalf("after the /24: elements %v, want %s for 28s and 192.0.2.9 for 4m29s", f.els, longP)
	}
	if len(k.shadowed) != 0 {
		t.Errorf("shadowed %v after they came back", k.shadowed)
	}
}
