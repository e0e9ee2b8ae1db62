package gateway

import (
	"testing"
	"time"

	"imapgate/config"
	"imapgate/conntable"
	"imapgate/kernel"
	"imapgate/limiter"
)

func TestValuesConverted(t *testing.T) {
	c, err := config.Parse("t", `
[limits]
max_per_ip = 7
rate_per_ip = "5/10s"
exempt = ["192.0.2.10", "2001:db8::/48"]
dry_run = ["max_per_prefix"]
[limits.action]
max_per_ip = "close"
[[limits.override]]
cidr = "198.51.100.0/24"
max_per_ip = 50
[timeouts]
established = "45m"
`)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy(c)
	if p.Limits.MaxPerIP != 7 || p.Limits.RatePerIP.Burst != 5 || p.Limits.RatePerIP.Per != 10*time.Second {
		t.Errorf("limits %+v", p.Limits)
	}
	if len(p.Exempt) != 2 || p.Exempt[0].String() != "192.0.2.10/32" || !p.DryRun[7] {
		t.Errorf("exempt %v dryrun %v", p.Exempt, p.DryRun)
	}
	if len(p.Overrides) != 1 || p.Overrides[0].Limits.MaxPerIP != 50 || p.Overrides[0].Limits.MaxPreauthPerIP != 7 {
		t.Errorf("override %+v", p.Overrides)
	}
	if TableConfig(c).Timeouts[2] != 45*time.Minute {
		t.Errorf("table %+v", TableConfig(c))
	}
	if !c.IsSet("limits.max_per_ip") || c.IsSet("limits.max_per_prefix") {
		t.Error("IsSet wrong")
	}
}

func TestBanPolicyAndKnownGoodConverted(t *testing.T) {
	c, err := config.Parse("t", `
[limits.auth_failures]
user_failures = 5
min_users = 2
spray_failures = 0
[limits.known_good]
min_users = 4
window = "2h"
max_per_ip = 500
rate_per_prefix = "0"
`)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy(c)
	if pen := p.Penalty; pen.UserFailures != 5 || pen.MinUsers != 2 || pen.SprayFailures != 0 || pen.Failures != 10 {
		t.Errorf("penalty %+v", pen)
	}
	kg := p.KnownGood
	if kg.MinUsers != 4 || kg.Window != 2*time.Hour || kg.MaxPerIP != 500 || kg.MaxPreauthPerIP != 100 ||
		kg.RatePerPrefix.Burst != 0 || kg.RatePerIP.Burst != 1000 {
		t.Errorf("known_good %+v", kg)
	}
	if err := p.Validate(); err != nil {
		t.Error(err)
	}
}

// config is a leaf and names the limits itself: its list and bounds must
// be the limiter's.
func TestConfigKnowsTheLimiter(t *testing.T) {
	if len(config.LimitNames) != int(limiter.NumReasons) {
		t.Fatalf("config.LimitNames has %d names, the limiter %d", len(config.LimitNames), limiter.NumReasons)
	}
	for i, name := range config.LimitNames {
		if r, ok := limiter.ParseReason(name); !ok || int(r) != i {
			t.Errorf("config.LimitNames[%d] = %q, limiter says %v, %v", i, name, r, ok)
		}
	}
	if config.MaxMinUsers != limiter.MaxMinUsers || config.MaxKnownGoodUsers != limiter.MaxKnownGoodUsers {
		t.Errorf("bounds differ: config %d, %d; limiter %d, %d", config.MaxMinUsers, config.MaxKnownGoodUsers,
			limiter.MaxMinUsers, limiter.MaxKnownGoodUsers)
	}
	p := Policy(config.Default())
	if err := p.Validate(); err != nil {
		t.Errorf("the default policy: %v", err)
	}
}

// The defaults config writes out as literals (it imports nothing of
// imapgate) are the packages' own.
func TestConfigDefaultsMatchPackages(t *testing.T) {
	c := config.Default()
	if got := TableConfig(c).Silent; got != conntable.DefaultSilent {
		t.Errorf("timeouts.silent default %s, conntable.DefaultSilent %s", got, conntable.DefaultSilent)
	}
	if got := Escalation(c); got != kernel.DefaultEscalation {
		t.Errorf("kernel.escalation default %+v, kernel.DefaultEscalation %+v", got, kernel.DefaultEscalation)
	}
}
