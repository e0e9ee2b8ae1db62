package cluster

import (
	"errors"
	"strings"
	"testing"
)

// Only a password that stands as a token is masked: quoted by a server
// (also a short one, also URL-escaped), not a word that contains it.
func TestMaskSecrets(t *testing.T) {
	for _, tt := range []struct{ text, secret, want string }{
		{"WRONGPASS invalid username-password pair or user is disabled.", "a", "WRONGPASS invalid username-password pair or user is disabled."},
		{"WRONGPASS invalid username-password pair or user is disabled.", "password", "WRONGPASS invalid username-password pair or user is disabled."},
		{"dial tcp 127.0.0.1:27379: connect: connection refused", "a", "dial tcp 127.0.0.1:27379: connect: connection refused"},
		{"ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `imapgate`, `a`, ", "a",
			"ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `imapgate`, `xxxxx`, "},
		{"ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'imapgate' 'Corr3ct-Horse.Battery' ", "Corr3ct-Horse.Battery",
			"ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'imapgate' 'xxxxx' "},
		{"redis://imapgate:p%40ss%3Aw0rd@h:1 failed", "p@ss:w0rd", "redis://imapgate:xxxxx@h:1 failed"},
		{"sentinel_password=p%40ss%3Aw%2Brd", "p@ss:w+rd", "sentinel_password=xxxxx"},
		{"s3cret", "s3cret", "xxxxx"},
		{"(s3cret t0ps3cret)", "s3cret", "(xxxxx t0ps3cret)"},
		{"x!y !y", "!y", "xxxxxx xxxxx"},
	} {
		if got := maskSecrets(tt.text, tt.secret); got != tt.want {
			t.Errorf("maskSecrets(%q, %q) = %q, want %q", tt.text, tt.secret, got, tt.want)
		}
	}
}

// -check's messages stay whole with a short common password (they used
// to read "Redis xxxxxt … refused user imxxxxxpgxxxxxte"), and a long
// one that a server quotes is masked.
func TestProbeMessagesMaskOnlyThePassword(t *testing.T) {
	wrongpass := errors.New("WRONGPASS invalid username-password pair or user is disabled.")
	for _, tt := range []struct {
		url  string
		err  error
		want string
		not  string
	}{
		{"redis://imapgate:a@127.0.0.1:27379", wrongpass, "Redis at 127.0.0.1:27379 refused user imapgate and its password " +
			"(WRONGPASS: a wrong password, an unknown user or one that is off): check the URL's user and password " +
			"against the ACL user's line (on, >password)", "xxxxx"},
		{"redis://imapgate:wrong@127.0.0.1:27379", wrongpass, "(WRONGPASS: a wrong password, an unknown user", "xxxxx"},
		{"redis://imapgate:password@127.0.0.1:27379", wrongpass, "refused user imapgate and its password (WRONGPASS", "xxxxx"},
		{"redis://imapgate:Tr0ub4dor-and-3@127.0.0.1:27379",
			errors.New("ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `imapgate`, `Tr0ub4dor-and-3`, "),
			"with args beginning with: `3`, `AUTH`, `imapgate`, `xxxxx`,", "Tr0ub4dor"},
	} {
		p := testProber(t, tt.url)
		p.user = "imapgate"
		got := p.describe(p.redis(), "connecting", tt.err).Error()
		if !strings.Contains(got, tt.want) || strings.Contains(got, tt.not) {
			t.Errorf("%s: %q\nwant %q, without %q", tt.url, got, tt.want, tt.not)
		}
	}
}
