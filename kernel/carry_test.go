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

// flood refuses a more than the default threshold at now, by an address
// limit or (prefix) by a per-prefix limit.
func flood(k *Kernel, a netip.Addr, prefix bool, now time.Time) {
	for i := 0; i <= DefaultEscalation.Refusals; i++ {
		if prefix {
			k.RefusedPrefix(a, now)
		} else {
			k.Refused(a, now)
		}
	}
}

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// A reload's new Kernel takes what the old one hands over: the
// escalations in the sets (not the bans: those come back from the
// limiter), those queued and not yet synced, and the escalation state,
// so that a flooder's next drop goes on from its level, an address's
// refusal window goes on counting, and a prefix's level is kept too; and
// the known-good addresses (not those whose time is over), kept inside a
// dropped prefix.
func TestCarryLevelsWindowsAndDrops(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	banned := netip.MustParsePrefix("192.0.2.7/32")
	old, _ := newFake(Options{Escalation: DefaultEscalation, Bans: func(time.Time) []limiter.Ban {
		return []limiter.Ban{{Key: banned, Until: t0.Add(time.Hour)}}
	}})
	flood(old, flooder, false, t0) // level 1: 30 s
	old.Sync(t0)
	t1 := t0.Add(31 * time.Second)
	flood(old, flooder, false, t1) // level 2: 60 s
	half := netip.MustParseAddr("192.0.2.50")
	for i := 0; i < 60; i++ {
		old.Refused(half, t1)
	}
	spread := func(k *Kernel, now time.Time) { // a per-prefix limit's refusals over many addresses
		for i := 0; i <= DefaultEscalation.Refusals; i++ {
			k.RefusedPrefix(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), now)
		}
	}
	spread(old, t1) // the /24 at level 1: 30 s
	old.Sync(t1)
	queued := netip.MustParseAddr("192.0.2.60")
	flood(old, queued, false, t1) // escalated, not yet synced when the reload comes
	good, gone := netip.MustParseAddr("198.51.100.200"), netip.MustParseAddr("198.51.100.201")
	old.Good(good, t1.Add(time.Hour))
	old.Good(gone, t1)
	old.Close()
	c := old.Handover(t1)

	var logs []string
	k, f := newFake(Options{Escalation: DefaultEscalation, Log: func(_ courierlog.Priority, m string) { logs = append(logs, m) }})
	k.Carry(c, t1)
	if _, ok := f.els[banned]; ok {
		t.Fatal("a ban was carried: it comes back from the limiter's list")
	}
	k.Sync(t1)
	net24 := netip.MustParsePrefix("198.51.100.0/24")
	want := map[netip.Prefix]time.Duration{host(flooder): time.Minute, net24: 30 * time.Second, host(queued): 30 * time.Second}
	if !maps.Equal(f.els, want) {
		t.Fatalf("elements %v, want %v", f.els, want)
	}
	if kept := map[netip.Prefix]time.Duration{host(good): time.Hour}; !maps.Equal(f.kept, kept) {
		t.Fatalf("kept %v, want the known-good address inside the dropped /24 (%v)", f.kept, kept)
	}
	for _, l := range []string{
		"kernel: dropping new connections from ::ffff:192.0.2.66 for 1m0s (kept across a reload)",
		"kernel: dropping new connections from ::ffff:192.0.2.60 for 30s (101 refusals in 10s, level 1)",
	} {
		if !slices.Contains(logs, l) {
			t.Fatalf("log %q lacks %q", logs, l)
		}
	}
	for i := 0; i < 41; i++ { // 101 in the window begun before the reload
		k.Refused(half, t1.Add(time.Second))
	}
	k.Sync(t1.Add(time.Second))
	if d := f.els[host(half)]; d != 30*time.Second {
		t.Fatalf("60 refusals before the reload and 41 after: element %v, want 30s", d)
	}
	t2 := t1.Add(61 * time.Second)
	flood(k, flooder, false, t2)
	spread(k, t2)
	k.Sync(t2)
	if d := f.els[host(flooder)]; d != 2*time.Minute {
		t.Fatalf("the flooder's third drop %v, want 2m0s (level 3)", d)
	}
	if d := f.els[net24]; d != time.Minute {
		t.Fatalf("the /24's second drop %v, want 1m0s (level 2)", d)
	}
	// What was handed over is gone from the old Kernel.
	if n := len(old.esc.m) + len(old.esc.pm) + len(old.pending); n != 0 {
		t.Fatalf("the old Kernel kept %d entries", n)
	}
}

// New escalation settings apply to what is carried: the level goes on
// with the new durations, a carried window is judged by the new threshold
// and ended by the new window.
func TestCarryIntoOtherSettings(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	old, _ := newFake(Options{Escalation: DefaultEscalation})
	for i := 0; i < 3; i++ { // levels 1, 2, 3: 30 s, 1 m, 2 m
		flood(old, flooder, false, t0)
		old.Sync(t0)
		t0 = t0.Add(3 * time.Minute)
	}
	slow, fast := netip.MustParseAddr("192.0.2.51"), netip.MustParseAddr("192.0.2.52")
	for i := 0; i < 40; i++ {
		old.Refused(slow, t0)
		old.Refused(fast, t0)
	}
	next := Escalation{Refusals: 40, Window: 5 * time.Second, First: 10 * time.Second, Max: time.Hour}
	k, f := newFake(Options{Escalation: next})
	k.Carry(old.Handover(t0), t0)
	k.Refused(fast, t0.Add(time.Second))          // 41 in the window: over the new threshold
	k.Refused(slow, t0.Add(6*time.Second))        // the new window has ended: 1
	flood(k, flooder, false, t0.Add(time.Second)) // level 4 with the new durations
	k.Sync(t0.Add(time.Second))
	want := map[netip.Prefix]time.Duration{host(fast): 10 * time.Second, host(flooder): 80 * time.Second}
	if !maps.Equal(f.els, want) {
		t.Fatalf("elements %v, want %v", f.els, want)
	}
}

// A dry run's escalations were never in the sets: into a Kernel that
// drops, no element is carried, but the level is, and the next burst
// escalates at once (the dry run's drop end is not in its way). Into a
// dry run, the escalations in force are carried as would-be drops.
func TestCarryAcrossDryRun(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	dry, _ := newFake(Options{Escalation: DefaultEscalation, DryRun: true})
	flood(dry, flooder, false, t0)
	dry.Sync(t0)
	queued := netip.MustParseAddr("192.0.2.60")
	flood(dry, queued, false, t0)
	k, f := newFake(Options{Escalation: DefaultEscalation})
	k.Carry(dry.Handover(t0), t0)
	k.Sync(t0)
	if len(f.els) != 0 {
		t.Fatalf("a dry run's escalations entered the sets: %v", f.els)
	}
	t1 := t0.Add(time.Second)
	flood(k, flooder, false, t1)
	k.Sync(t1)
	if d := f.els[host(flooder)]; d != time.Minute {
		t.Fatalf("after a dry run at level 1: %v, want 1m0s (level 2)", d)
	}

	var logs []string
	dry, df := newFake(Options{Escalation: DefaultEscalation, DryRun: true, Log: func(_ courierlog.Priority, m string) { logs = append(logs, m) }})
	dry.Carry(k.Handover(t1), t1)
	if len(df.els) != 0 || len(dry.Members(t1)) != 1 || !strings.Contains(strings.Join(logs, "\n"), "would drop new connections from ::ffff:192.0.2.66 for 1m0s") {
		t.Fatalf("into a dry run: elements %v, members %v, log %q", df.els, dry.Members(t1), logs)
	}
}

// What a reload carries is not counted again: the new Kernel goes on
// from the old one's additions (TestCarryKeepsCounters), so a drop or a
// ban in force across a reload counts once in
// imapgate_kernel_additions_total.
func TestCarryCountsNothingAgain(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	banned, later := netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("192.0.2.8/32")
	bans := []limiter.Ban{{Key: banned, Until: t0.Add(time.Hour)}}
	opts := Options{Escalation: DefaultEscalation, Bans: func(time.Time) []limiter.Ban { return bans }}
	old, _ := newFake(opts)
	flood(old, flooder, false, t0)
	old.Sync(t0)
	if got := old.Stats().Added; got[ReasonBan] != 1 || got[ReasonEscalation] != 1 {
		t.Fatalf("old Kernel's additions %v, want a ban and an escalation", got)
	}
	old.Close()
	k, f := newFake(opts)
	k.Carry(old.Handover(t0), t0)
	k.Sync(t0)
	if _, ok := f.els[banned]; !ok || len(f.els) != 2 {
		t.Fatalf("elements %v, want the ban and the flooder again", f.els)
	}
	if got := k.Stats().Added; got[ReasonBan] != 1 || got[ReasonEscalation] != 1 {
		t.Fatalf("the new Kernel counted again what it was handed: %v, want the old one's 1 and 1", got)
	}
	bans = append(bans, limiter.Ban{Key: later, Until: t0.Add(time.Hour)})
	k.Sync(t0.Add(time.Second))
	if got := k.Stats().Added; got[ReasonBan] != 2 {
		t.Fatalf("a ban made after the reload: additions %v, want it counted", got)
	}
}

// The counters go on across a reload: the new Kernel starts from the
// old one's additions, dropped packets and bytes (read when it closed,
// before its table went) and table re-creations.
func TestCarryKeepsCounters(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	old, of := newFake(Options{Escalation: DefaultEscalation})
	flood(old, flooder, false, t0)
	old.Sync(t0)
	of.packets, of.bytes = 10, 600
	of.missing = true // an administrator deleted the table once
	old.Sync(t0.Add(time.Second))
	of.packets, of.bytes = 0, 0 // made again, from zero; the last reading before it was 10/600
	old.Close()
	k, f := newFake(Options{Escalation: DefaultEscalation})
	k.Carry(old.Handover(t0.Add(time.Second)), t0.Add(time.Second))
	f.packets, f.bytes = 5, 300
	s := k.Stats()
	if s.Added[ReasonEscalation] != 1 || s.Packets != 15 || s.Bytes != 900 || s.Recreated != 1 {
		t.Fatalf("the new Kernel's Stats %+v, want 1 escalation, 15 packets, 900 bytes, 1 re-creation", s)
	}
}
