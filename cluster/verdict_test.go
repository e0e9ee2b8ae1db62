package cluster

import (
	"strings"
	"testing"

	"imapgate/limiter"
)

// The scripts' answers are Redis's bytes: a short one or a reason out of
// range is an error (the node degrades), never an index out of range later.
func TestVerdictRejectsBadAnswers(t *testing.T) {
	for _, tt := range []struct {
		res  []int64
		want string
	}{
		{[]int64{0, 0, 0}, "short answer"},
		{[]int64{1, 99, 4, 0}, "out of range"},
		{[]int64{1, -1, 4, 0}, "out of range"},
	} {
		if _, err := verdict("login", tt.res, nil, 4); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("verdict(%v) = %v, want %q", tt.res, err, tt.want)
		}
	}
	if _, err := verdict("login", []int64{-1, 0, 0, 0}, nil, 4); err != errNotRegistered {
		t.Errorf("-1: %v, want errNotRegistered", err)
	}
	r, err := verdict("login", []int64{1, int64(limiter.MaxPerUserIP), 3, 0}, nil, 4)
	if err != nil || !r.Refused || r.Reason != limiter.MaxPerUserIP || r.Limit != 3 {
		t.Errorf("a refusal by max_per_user_ip decoded as %+v, %v", r, err)
	}
}

// Known-good entries come from Redis (stored or published): anything but
// a prefix and a positive µs time is refused, not applied.
func TestParseGoodRejectsBadEntries(t *testing.T) {
	for _, c := range []struct {
		field, value string
		ok           bool
	}{
		{"192.0.2.1/32", "1800000000000000", true},
		{"2001:db8::/64", "1800000000000000", true},
		{"192.0.2.1", "1800000000000000", false},
		{"192.0.2.1/33", "1800000000000000", false},
		{"192.0.2.1/32", "soon", false},
		{"192.0.2.1/32", "-5", false},
		{"192.0.2.1/32", "", false},
	} {
		k, until, ok := parseGood(c.field, c.value)
		if ok != c.ok {
			t.Errorf("parseGood(%q, %q) ok = %v", c.field, c.value, ok)
		}
		if ok && (k.String() != c.field || until.UnixMicro() != 1800000000000000) {
			t.Errorf("parseGood(%q, %q) = %v %v", c.field, c.value, k, until)
		}
	}
}
