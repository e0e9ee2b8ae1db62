package config

import (
	"time"

	"imapgate/conntable"
	"imapgate/kernel"
	"imapgate/limiter"
)

// Default returns the configuration used for every key the file leaves out.
// imapgate.example.toml documents the same values.
func Default() *Config {
	p := limiter.DefaultPolicy()
	action := make(map[string]string)
	for r := limiter.Reason(0); r < limiter.NumReasons; r++ {
		action[r.String()] = p.Action[r].String()
	}
	return &Config{
		Listen: Listen{Address: ":993", ProxyHeaderTimeout: Duration(5 * time.Second)},
		TLS:    TLS{MinVersion: "1.2"},
		Upstream: Upstream{
			Mode:          "tcp",
			Exec:          []string{"/usr/lib/courier/courier/imaplogin", "/usr/bin/imapd", "Maildir"},
			CourierConfig: "/etc/courier/imapd-ssl",
			Address:       "127.0.0.1:143", TLSVerify: true,
			ConnectTimeout: Duration(5 * time.Second), GreetingTimeout: Duration(10 * time.Second),
			SendID: true,
		},
		Login: Login{MaxLine: 8 << 10, MaxLiteral: 8 << 10, MaxCommands: 32},
		Timeouts: Timeouts{
			Handshake:   Duration(conntable.DefaultTimeouts[conntable.Handshake]),
			Silent:      Duration(conntable.DefaultSilent),
			Preauth:     Duration(conntable.DefaultTimeouts[conntable.Preauth]),
			Established: Duration(conntable.DefaultTimeouts[conntable.Established]),
			Closing:     Duration(conntable.DefaultTimeouts[conntable.Closing]),
		},
		Table: Table{Max: 4096},
		Limits: Limits{
			MaxConnections:  p.Limits.MaxConnections,
			MaxPerIP:        p.Limits.MaxPerIP,
			MaxPreauthPerIP: p.Limits.MaxPreauthPerIP,
			MaxPerPrefix:    p.Limits.MaxPerPrefix,
			MaxPerUserIP:    p.Limits.MaxPerUserIP,
			IPv4Prefix:      p.IPv4Prefix,
			IPv6Prefix:      p.IPv6Prefix,
			RatePerIP:       Rate(p.Limits.RatePerIP),
			RatePerPrefix:   Rate(p.Limits.RatePerPrefix),
			RateEntries:     1 << 20,
			Action:          action,
			AuthFailures: AuthFailures{
				Failures: p.Penalty.Failures, PrefixFailures: p.Penalty.PrefixFailures,
				Window: Duration(p.Penalty.Window), BanTime: Duration(p.Penalty.BanTime),
				Delay: Duration(p.Penalty.Delay), MaxDelay: Duration(p.Penalty.MaxDelay),
			},
			OpenFilesCheck: true,
		},
		Log:   Log{Output: "stderr", Tag: "imapd-ssl"},
		Admin: Admin{Address: "127.0.0.1:9100"},
		Kernel: Kernel{
			Escalation: KernelEscalation{
				Refusals: kernel.DefaultEscalation.Refusals, Window: Duration(kernel.DefaultEscalation.Window),
				First: Duration(kernel.DefaultEscalation.First), Max: Duration(kernel.DefaultEscalation.Max),
			},
			ConntrackWatch: Duration(10 * time.Second),
		},
	}
}
