package proxy

import "testing"

func TestClassifyLogin(t *testing.T) {
	tests := []struct {
		line      string
		cancelled bool
		class     loginClass
		reason    string
	}{
		{"a OK LOGIN Ok.", false, loginOK, "ok"},
		{"a ok [CAPABILITY IMAP4rev1] Logged in", false, loginOK, "ok"},
		{"a NO Login failed.", false, loginAuthFailed, "failed"},
		{"a NO [AUTHENTICATIONFAILED] Authentication failed.", false, loginAuthFailed, "failed"},
		{"a NO [ALERT] Account locked by a bad guess", false, loginAuthFailed, "failed"},
		{"a NO [LIMIT] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=3)", false, loginRefused, "limit"},
		{"a NO [UNAVAILABLE] Temporary authentication failure.", false, loginRefused, "unavailable"},
		{"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed", false, loginRefused, "privacyrequired"},
		{"a NO [CONTACTADMIN]", false, loginRefused, "contactadmin"},
		{"a no [expired] password expired", false, loginRefused, "expired"},
		{"a NO [AUTHORIZATIONFAILED] not allowed", false, loginRefused, "authorizationfailed"},
		{"a BAD Error in IMAP command received by server.", false, loginBad, "bad"},
		{"a BAD AUTHENTICATE aborted.", true, loginCancelled, "cancelled"},
		{"a NO Authentication cancelled", true, loginCancelled, "cancelled"},
		{"a NO [LIMIT", false, loginAuthFailed, "failed"},            // no closing bracket: no code
		{"a NO [\xde\xadLIMIT] x", false, loginAuthFailed, "failed"}, // not an atom
		{"a NO [" + string(make([]byte, 40)) + "]", false, loginAuthFailed, "failed"},
		{"a NOPE", false, loginAuthFailed, "failed"},
	}
	for _, tt := range tests {
		got := classifyLogin([]byte(tt.line), "a", tt.cancelled)
		if got.class != tt.class || got.reason != tt.reason {
			t.Errorf("classifyLogin(%q, cancelled=%v) = %v %q, want %v %q", tt.line, tt.cancelled, got.class, got.reason, tt.class, tt.reason)
		}
	}
	for _, r := range loginReasons() {
		if r == "" {
			t.Error("empty metric label")
		}
	}
}

func TestParseIDParamsAndSanitize(t *testing.T) {
	cmd := "i ID (\"name\" \"mutt\" \"X-Originating-IP\" \"203.0.113.9\" \"x-session-id\" {2}\r\ns1 \"version\" NIL \"x-proxy-ttl\" \"5\")\r\n"
	_, _, args, err := parseArgs([]byte(cmd))
	if err != nil {
		t.Fatal(err)
	}
	pairs, ok := parseIDParams(args)
	if !ok || len(pairs) != 5 {
		t.Fatalf("parseIDParams = %d pairs, %v", len(pairs), ok)
	}
	kept := sanitizeID(pairs, 5)
	out := string(appendIDCommand(nil, "i", kept))
	if want := "i ID (\"name\" \"mutt\" \"version\" NIL)\r\n"; out != want {
		t.Errorf("sanitized ID = %q, want %q", out, want)
	}
	for _, bad := range []string{"i ID\r\n", "i ID (\"a\")\r\n", "i ID ((\"a\" \"b\"))\r\n", "i ID (NIL \"b\")\r\n", "i ID FOO\r\n"} {
		_, _, args, err := parseArgs([]byte(bad))
		if err != nil {
			continue
		}
		if _, ok := parseIDParams(args); ok {
			t.Errorf("parseIDParams accepted %q", bad)
		}
	}
	if _, _, args, _ := parseArgs([]byte("i ID NIL\r\n")); true {
		if p, ok := parseIDParams(args); !ok || len(p) != 0 {
			t.Errorf("ID NIL: %v %v", p, ok)
		}
	}
	// RFC 2971's bound: at most 30 pairs, room kept for imapgate's own.
	var many []idPair
	for range 40 {
		many = append(many, idPair{field: []byte("k"), value: []byte("v")})
	}
	if n := len(sanitizeID(many, 5)); n != 25 {
		t.Errorf("kept %d of 40 pairs, want 25", n)
	}
}
