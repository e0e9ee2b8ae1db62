package proxy

import (
	"net/netip"
	"strings"
	"testing"

	"imapgate/courierlog"
	"imapgate/limiter"
)

type countingEvents struct {
	nopEvents
	refused, would []string
}

func (e *countingEvents) Refused(reason string, afterTLS bool) {
	e.refused = append(e.refused, reason)
}
func (e *countingEvents) WouldRefuse(reason string) { e.would = append(e.would, reason) }

type addrTracker struct {
	nopTracker
	refused []netip.Addr
}

func (t *addrTracker) RefusedFrom(a netip.Addr) { t.refused = append(t.refused, a) }

// One decision, one report: its dry-run lines and counts, then the
// refusal's line, count and tracker note, from what the decision carries.
func TestReportOneDecision(t *testing.T) {
	mem := &courierlog.Memory{}
	ev, tr := &countingEvents{}, &addrTracker{}
	s := &Server{log: courierlog.New(mem, courierlog.Options{TLS: true}), events: ev, tracker: tr}
	for i := range s.refusalLog {
		s.refusalLog[i] = newRefusalThrottle()
	}
	a := netip.MustParseAddr("192.0.2.7")
	d := limiter.Decision{Refused: true, Reason: limiter.MaxPerPrefix, Limit: 300, Addr: a,
		Prefix: netip.MustParsePrefix("192.0.2.0/24"), WouldRefuse: 1 << limiter.MaxPerIP}
	d.WouldLimit[limiter.MaxPerIP] = 4
	s.report(d, false)
	lines := strings.Join(mem.Lines(), "\n")
	for _, want := range []string{
		"Maximum connection limit reached for ::ffff:192.0.2.7 (dry run: not refused)",
		"Maximum network connection limit reached for ::ffff:192.0.2.7 (192.0.2.0/24)",
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("log lacks %q:\n%s", want, lines)
		}
	}
	if len(ev.would) != 1 || ev.would[0] != "max_per_ip" || len(ev.refused) != 1 || ev.refused[0] != "max_per_prefix" {
		t.Errorf("events: would %v, refused %v", ev.would, ev.refused)
	}
	if len(tr.refused) != 1 || tr.refused[0] != a {
		t.Errorf("tracker: %v", tr.refused)
	}
	// Admitted, nothing in dry run: nothing to report.
	s.report(limiter.Decision{Addr: a}, false)
	if n := len(mem.Lines()); n != 2 {
		t.Errorf("an admission wrote %d lines", n-2)
	}
}
