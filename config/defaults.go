package config

import "time"

// Default returns the configuration used for every key the file leaves
// out: imapgate's defaults, in this one place (imapgate.example.toml
// documents the same values; the packages' zero values are not used by a
// configured imapgate). Generous per-address limits, so that a household
// or office with many mailboxes is never refused; a strict limit on
// connections that have not logged in; refusals that explain themselves
// where they concern one address; courier's timeouts where it has them.
func Default() *Config {
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
			// Courier has no handshake timeout (a silent TCP client holds a
			// slot forever); 60 s is imaplogin's alarm; 30 min its
			// autologout (RFC 2177 clients re-issue IDLE every 29 min).
			Handshake: Duration(10 * time.Second),
			// An honest client sends its ClientHello right behind the
			// connect; one that sends nothing goes sooner (conntable.DefaultSilent).
			Silent:      Duration(5 * time.Second),
			Preauth:     Duration(60 * time.Second),
			Established: Duration(30 * time.Minute),
			Closing:     Duration(10 * time.Second),
		},
		Table: Table{Max: 4096},
		Limits: Limits{
			MaxPerIP:        100,
			MaxPreauthPerIP: 10,
			MaxPerPrefix:    300,
			MaxPerUserIP:    20,
			IPv4Prefix:      24,
			IPv6Prefix:      64,
			RatePerIP:       Rate{Burst: 60, Per: time.Minute},
			RatePerPrefix:   Rate{Burst: 300, Per: time.Minute},
			RateEntries:     1 << 20,
			Action: map[string]string{
				"deny": "close", "not_allowed": "close", "banned": "close",
				"rate_per_ip": "close", "rate_per_prefix": "close", "max_connections": "close",
				"max_per_ip": "bye", "max_per_prefix": "bye", "max_per_user_ip": "bye",
				"max_preauth_per_ip": "wait",
			},
			AuthFailures: AuthFailures{
				Failures: 10, MinUsers: 3, UserFailures: 10, SprayFailures: 100,
				Window: Duration(10 * time.Minute), BanTime: Duration(10 * time.Minute),
				Delay: Duration(time.Second), MaxDelay: Duration(10 * time.Second),
			},
			KnownGood: KnownGood{
				MinUsers: 3, Window: Duration(24 * time.Hour),
				MaxPerIP: 2000, MaxPreauthPerIP: 100, MaxPerPrefix: 2000,
				RatePerIP:     Rate{Burst: 1000, Per: time.Minute},
				RatePerPrefix: Rate{Burst: 2000, Per: time.Minute},
			},
			OpenFilesCheck: true,
		},
		Log:   Log{Output: "stderr", Tag: "imapd-ssl"},
		Admin: Admin{Address: "127.0.0.1:9100"},
		Cluster: Cluster{KeyPrefix: "imapgate", Timeout: Duration(50 * time.Millisecond), NodeTTL: Duration(15 * time.Second),
			OverLimitHold: Duration(250 * time.Millisecond), TicketKeys: true, TicketRotation: Duration(time.Hour)},
		Kernel: Kernel{
			// kernel.DefaultEscalation: more than 100 refusals in 10 s; 30 s,
			// doubling to 10 min; a prefix when 4 of its addresses are
			// dropped at once.
			Table: "imapgate",
			Escalation: KernelEscalation{
				Refusals: 100, Window: Duration(10 * time.Second),
				First: Duration(30 * time.Second), Max: Duration(10 * time.Minute),
				PrefixAddresses: 4,
			},
			ConntrackWatch: Duration(10 * time.Second),
		},
	}
}

// LimitNames are the limits [limits.action] and limits.dry_run may name,
// in the limiter's order (limiter.Reason's names; a test in gateway keeps
// the two lists equal).
var LimitNames = []string{
	"deny", "not_allowed", "banned", "rate_per_ip", "rate_per_prefix",
	"max_connections", "max_per_ip", "max_per_prefix", "max_preauth_per_ip", "max_per_user_ip",
}

// Bounds the limiter's tables impose (limiter.MaxMinUsers and
// limiter.MaxKnownGoodUsers; kept equal by a test in gateway).
const (
	MaxMinUsers       = 8
	MaxKnownGoodUsers = 8
)
