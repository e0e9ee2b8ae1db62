package limiter

import "time"

// DefaultPolicy is, for the limiter's tests, the policy imapgate's defaults
// (config.Default, converted by gateway.Policy) describe.
func DefaultPolicy() Policy {
	p := Policy{
		Limits: Limits{
			MaxPerIP:        100,
			MaxPreauthPerIP: 10,
			MaxPerPrefix:    300,
			MaxPerUserIP:    20,
			RatePerIP:       Rate{Burst: 60, Per: time.Minute},
			RatePerPrefix:   Rate{Burst: 300, Per: time.Minute},
		},
		IPv4Prefix: 24,
		IPv6Prefix: 64,
		Penalty: Penalty{
			Failures: 10, MinUsers: 3, UserFailures: 10, SprayFailures: 100,
			Window: 10 * time.Minute, BanTime: 10 * time.Minute,
			Delay: time.Second, MaxDelay: 10 * time.Second,
		},
		KnownGood: KnownGood{
			MinUsers: 3, Window: 24 * time.Hour,
			MaxPerIP: 2000, MaxPreauthPerIP: 100, MaxPerPrefix: 2000,
			RatePerIP:     Rate{Burst: 1000, Per: time.Minute},
			RatePerPrefix: Rate{Burst: 2000, Per: time.Minute},
		},
	}
	for r := range p.Action {
		p.Action[r] = Close
	}
	p.Action[MaxPerIP] = Bye
	p.Action[MaxPerPrefix] = Bye
	p.Action[MaxPerUserIP] = Bye
	p.Action[MaxPreauthPerIP] = Wait
	return p
}
