package cluster

import (
	"time"

	"imapgate/limiter"
)

// defaultPolicy is, for this package's tests, the policy imapgate's defaults
// describe (gateway.Policy(config.Default()); gateway imports cluster, so
// these internal tests cannot).
func defaultPolicy() limiter.Policy {
	p := limiter.Policy{
		Limits: limiter.Limits{
			MaxPerIP:        100,
			MaxPreauthPerIP: 10,
			MaxPerPrefix:    300,
			MaxPerUserIP:    20,
			RatePerIP:       limiter.Rate{Burst: 60, Per: time.Minute},
			RatePerPrefix:   limiter.Rate{Burst: 300, Per: time.Minute},
		},
		IPv4Prefix: 24,
		IPv6Prefix: 64,
		Penalty: limiter.Penalty{
			Failures: 10, MinUsers: 3, UserFailures: 10, SprayFailures: 100,
			Window: 10 * time.Minute, BanTime: 10 * time.Minute,
			Delay: time.Second, MaxDelay: 10 * time.Second,
		},
		KnownGood: limiter.KnownGood{
			MinUsers: 3, Window: 24 * time.Hour,
			MaxPerIP: 2000, MaxPreauthPerIP: 100, MaxPerPrefix: 2000,
			RatePerIP:     limiter.Rate{Burst: 1000, Per: time.Minute},
			RatePerPrefix: limiter.Rate{Burst: 2000, Per: time.Minute},
		},
	}
	for r := range p.Action {
		p.Action[r] = limiter.Close
	}
	p.Action[limiter.MaxPerIP] = limiter.Bye
	p.Action[limiter.MaxPerPrefix] = limiter.Bye
	p.Action[limiter.MaxPerUserIP] = limiter.Bye
	p.Action[limiter.MaxPreauthPerIP] = limiter.Wait
	return p
}
