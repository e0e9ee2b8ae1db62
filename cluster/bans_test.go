package cluster

import (
	"imapgate/limiter"
	"net/netip"
	"testing"
	"time"
)

func TestParseBan(t *testing.T) {
	until := time.UnixMicro(1_800_000_000_123_456)
	tests := []struct {
		field, value string
		key          string
		user         string
		ok           bool
	}{
		{"a:192.0.2.7/32", "1800000000123456", "192.0.2.7/32", "", true},
		{"a:2001:db8::/64", "1800000000123456", "2001:db8::/64", "", true},
		{"u:2001:db8::7:0a1b2c3d4e5f6071", "1800000000123456 Alice Smith", "2001:db8::7/128", "Alice Smith", true},
		{"u:192.0.2.7:0a1b2c3d4e5f6071", "1800000000123456", "", "", false}, // a user ban names its user
		{"x:192.0.2.7/32", "1800000000123456", "", "", false},
		{"a:192.0.2.7/32", "soon", "", "", false},
	}
	for _, tt := range tests {
		b, ok := parseBan(tt.field, tt.value)
		if ok != tt.ok {
			t.Errorf("parseBan(%q, %q) ok=%v", tt.field, tt.value, ok)
			continue
		}
		if !ok {
			continue
		}
		if b.Key.String() != tt.key || b.User != tt.user || !b.Until.Equal(until) {
			t.Errorf("parseBan(%q, %q) = %+v", tt.field, tt.value, b)
		}
	}
	if f := banField(netip.MustParsePrefix("192.0.2.0/24")); f != "a:192.0.2.0/24" {
		t.Errorf("banField %q", f)
	}
}

// User names in keys are hashes under the cluster's secret: the same on
// every node, case-insensitive through the caller, unlike the name.
func TestUserHash(t *testing.T) {
	s := []byte("0123456789abcdef0123456789abcdef")
	if a, b := userHash(s, "alice"), userHash(s, "alice"); a != b || len(a) != 16 {
		t.Fatalf("%q %q", a, b)
	}
	if userHash(s, "alice") == userHash(s, "bob") || userHash(s, "alice") == userHash([]byte("another secret"), "alice") {
		t.Fatal("hash collides")
	}
}

func TestRateArgs(t *testing.T) {
	if i, b := rateArgs(limiterRate(60, time.Minute), true); i != "1000000" || b != "60" {
		t.Fatalf("60/1m: %s µs, burst %s", i, b)
	}
	if i, b := rateArgs(limiterRate(60, time.Minute), false); i != "0" || b != "0" {
		t.Fatalf("off: %s %s", i, b)
	}
}

func limiterRate(burst int, per time.Duration) (r limiterRateT) {
	r.Burst, r.Per = burst, per
	return r
}

type limiterRateT = limiter.Rate
