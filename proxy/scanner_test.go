package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestCommandHead(t *testing.T) {
	tests := []struct {
		in        string
		tag, name string
		ok        bool
	}{
		{"a1 LOGIN x y\r\n", "a1", "LOGIN", true},
		{"a1 capability\r\n", "a1", "CAPABILITY", true},
		{"A.2 NOOP", "A.2", "NOOP", true},
		{"tag]x NOOP\r\n", "tag]x", "NOOP", true},
		{"+ NOOP\r\n", "", "", false},     // "+" is not a tag character
		{"a1\r\n", "", "", false},         // no command
		{"a1  NOOP\r\n", "a1", "", false}, // two spaces
		{"\x16\x03\x01\x02\x00\r\n", "", "", false},
		{"GET / HTTP/1.1\r\n", "GET", "/", true}, // syntactically a command; upstream answers BAD
		{"", "", "", false},
	}
	for _, tt := range tests {
		tag, name, err := commandHead([]byte(tt.in))
		if (err == nil) != tt.ok || (tt.ok && (tag != tt.tag || name != tt.name)) {
			t.Errorf("commandHead(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.in, tag, name, err, tt.tag, tt.name, tt.ok)
		}
	}
}

func TestTrailingLiteral(t *testing.T) {
	tests := []struct {
		in      string
		size    int64
		nonSync bool
		has     bool
		bad     bool
	}{
		{"a LOGIN {4}\r\n", 4, false, true, false},
		{"a LOGIN {4+}\r\n", 4, true, true, false},
		{"a LOGIN {4-}\r\n", 4, true, true, false},
		{"a LOGIN x y\r\n", 0, false, false, false},
		{"a LOGIN {}\r\n", 0, false, false, true},
		{"a LOGIN {4x}\r\n", 0, false, false, true},
		{"a LOGIN {99999999999}\r\n", 0, false, false, true},
		{"a NOOP }\r\n", 0, false, false, false},
	}
	for _, tt := range tests {
		lit, has, err := trailingLiteral([]byte(tt.in))
		if (err != nil) != tt.bad || has != tt.has || lit.size != tt.size || lit.nonSync != tt.nonSync {
			t.Errorf("trailingLiteral(%q) = %+v, %v, %v", tt.in, lit, has, err)
		}
	}
}

func TestParseLogin(t *testing.T) {
	tests := []struct {
		in   string
		user string
		pass string
		ok   bool
	}{
		{"a LOGIN bob secret\r\n", "bob", "secret", true},
		{"a LOGIN \"bob smith\" \"p\\\"w\\\\d\"\r\n", "bob smith", "p\"w\\d", true},
		{"a LOGIN {3}\r\nbob {6}\r\nsecret\r\n", "bob", "secret", true},
		{"a LOGIN {3+}\r\nbob {6+}\r\nsecret\r\n", "bob", "secret", true},
		{"a LOGIN bob@example.com \"\"\r\n", "bob@example.com", "", true},
		{"a LOGIN bob\r\n", "", "", false},
		{"a LOGIN bob secret extra\r\n", "", "", false},
		{"a LOGIN \"bob secret\r\n", "", "", false},
		{"a LOGIN {10}\r\nbob\r\n", "", "", false}, // literal runs past the end
		{"a LOGIN (bob) secret\r\n", "", "", false},
		{"a LOGIN bob secret", "", "", false}, // no CRLF
	}
	for _, tt := range tests {
		_, name, args, err := parseArgs([]byte(tt.in))
		var user string
		if err == nil {
			user, err = loginUser(args)
		}
		if (err == nil) != tt.ok {
			t.Errorf("%q: err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && (name != "LOGIN" || user != tt.user || string(args[1].val) != tt.pass) {
			t.Errorf("%q: user %q pass %q, want %q %q", tt.in, user, args[1].val, tt.user, tt.pass)
		}
	}
}

func TestParseArgsLists(t *testing.T) {
	_, name, args, err := parseArgs([]byte("x ID (\"name\" \"mutt\" \"version\" {3}\r\n2.0)\r\n"))
	if err != nil || name != "ID" || len(args) != 1 || args[0].kind != tokList {
		t.Fatalf("ID list: %v %v %+v", name, err, args)
	}
	deep := "x ID " + strings.Repeat("(", 20) + strings.Repeat(")", 20) + "\r\n"
	if _, _, _, err := parseArgs([]byte(deep)); err == nil {
		t.Errorf("20-deep list accepted")
	}
}

func TestSASLUser(t *testing.T) {
	enc := func(s string) []byte { return []byte(base64.StdEncoding.EncodeToString([]byte(s))) }
	tests := []struct {
		mech string
		in   []byte
		user string // "" means none learnt
	}{
		{"PLAIN", enc("\x00bob\x00secret"), "bob"},
		{"PLAIN", enc("admin\x00bob\x00secret"), "bob"}, // the authcid, whose password is tried
		{"PLAIN", append(enc("\x00bob\x00secret"), "\r\n"...), "bob"},
		{"PLAIN", enc("bob\x00secret"), ""},
		{"PLAIN", enc("\x00\x00secret"), ""},
		{"PLAIN", []byte("!!!"), ""},
		{"PLAIN", []byte("="), ""},
		{"LOGIN", enc("alice@example.org"), "alice@example.org"},
		{"LOGIN", enc(""), ""},
		{"XOAUTH2", enc("user=carol@example.org\x01auth=Bearer ya29.token\x01\x01"), "carol@example.org"},
		{"XOAUTH2", enc("auth=Bearer ya29.token\x01\x01"), ""},
		{"OAUTHBEARER", enc("n,a=dave@example.org,\x01host=imap.example.org\x01port=993\x01auth=Bearer tok\x01\x01"), "dave@example.org"},
		{"OAUTHBEARER", enc("n,a=we=2Cird=3Dname,\x01auth=Bearer tok\x01\x01"), "we,ird=name"},
		{"OAUTHBEARER", enc("n,a=bad=41,\x01auth=Bearer tok\x01\x01"), ""},
		{"OAUTHBEARER", enc("n,,\x01auth=Bearer tok\x01\x01"), ""},
		{"CRAM-MD5", enc("bob 0123456789abcdef"), ""},
	}
	for _, tt := range tests {
		x := saslExchange{mech: tt.mech}
		x.response(tt.in)
		if x.user != tt.user {
			t.Errorf("%s %q: user %q, want %q", tt.mech, tt.in, x.user, tt.user)
		}
		if len(x.secret) == 0 {
			t.Errorf("%s %q: response not kept for the retry fingerprint", tt.mech, tt.in)
		}
		x.wipe()
	}
	// LOGIN's password (the second response) never becomes the user.
	x := saslExchange{mech: "LOGIN"}
	x.response(enc("alice"))
	x.response(enc("hunter2"))
	if x.user != "alice" {
		t.Errorf("LOGIN user %q after two responses", x.user)
	}
}

func TestRewriteCaps(t *testing.T) {
	tests := []struct{ in, out string }{
		{"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] Courier-IMAP ready.",
			"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Courier-IMAP ready."},
		{"* CAPABILITY IMAP4rev1 starttls IDLE", "* CAPABILITY IMAP4rev1 IDLE"},
		{"a1 OK [CAPABILITY IMAP4rev1 STARTTLS] done", "a1 OK [CAPABILITY IMAP4rev1] done"},
		{"* OK ready", "* OK ready"},
		{"* OK [CAPABILITY IMAP4rev1 STARTTLS no closing bracket", "* OK [CAPABILITY IMAP4rev1 STARTTLS no closing bracket"},
	}
	for _, tt := range tests {
		out, _ := rewriteCaps(nil, []byte(tt.in))
		if string(out) != tt.out {
			t.Errorf("rewriteCaps(%q) = %q, want %q", tt.in, out, tt.out)
		}
	}
	_, caps := rewriteCaps(nil, []byte("* CAPABILITY IMAP4rev1 ID"))
	if !hasCap(caps, "id") {
		t.Errorf("ID not seen in %q", caps)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		line string
		kind respKind
		ok   bool
	}{
		{"a1 OK done", respTagged, true},
		{"a1 ok", respTagged, true},
		{"a1 NO [AUTHENTICATIONFAILED] no", respTagged, false},
		{"a1 OKAY", respTagged, false},
		{"a10 OK other tag", respUntagged, false},
		{"+ go on", respContinue, false},
		{"* OK untagged", respUntagged, false},
	}
	for _, tt := range tests {
		kind, ok := classify([]byte(tt.line), "a1")
		if kind != tt.kind || ok != tt.ok {
			t.Errorf("classify(%q) = %v, %v", tt.line, kind, ok)
		}
	}
}

func TestReadLineBound(t *testing.T) {
	r := bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", 100)+"\r\nok\r\n"), 64)
	if _, err := readLine(r, 1000); !errors.Is(err, errLineTooLong) {
		t.Fatalf("long line: err = %v", err)
	}
}

func TestCmdTracker(t *testing.T) {
	// Each step is "C:" (client to upstream) or "S:" (upstream to client),
	// fed in 7-byte pieces; logout is whether LOGOUT was seen at the end.
	tests := []struct {
		name   string
		steps  []string
		logout bool
	}{
		{"literal content is not a command", []string{
			"C:a APPEND INBOX {20}\r\n", "S:+ Ready for literal data\r\n",
			"C:b LOGOUT\r\nxxxxxxxxxx\r\n", "C:c NOOP\r\n", "S:a OK APPEND completed\r\n"}, false},
		{"LOGOUT after a literal", []string{
			"C:a APPEND INBOX {4}\r\n", "S:+ go ahead\r\n", "C:abcd\r\n", "S:a OK\r\n", "C:d logout\r\n"}, true},
		{"refused synchronising literal: its data never comes", []string{
			"C:a2 APPEND INBOX {157286400}\r\n", "S:a2 NO [TOOBIG] Message too large.\r\n", "C:a3 LOGOUT\r\n"}, true},
		{"small refused literal", []string{
			"C:a2 APPEND INBOX {5}\r\n", "S:a2 NO [TRYCREATE] No such mailbox\r\n", "C:a3 LOGOUT\r\n"}, true},
		{"another command's answer does not refuse the literal", []string{
			"C:a1 NOOP\r\na2 APPEND INBOX {11}\r\n", "S:a1 OK NOOP\r\n", "S:+ Ready\r\n",
			"C:a3 LOGOUT\r\n", "S:a2 OK APPEND\r\n"}, false},
		{"a tag that only begins with the pending one", []string{
			"C:a2 APPEND INBOX {11}\r\n", "S:a22 OK x\r\n", "S:+ Ready\r\n", "C:a3 LOGOUT\r\n"}, false},
		{"non-synchronising literal follows at once", []string{
			"C:a APPEND INBOX {10+}\r\nb LOGOUT\r\n", "C:c NOOP\r\n"}, false},
		{"response literal that looks like a continuation", []string{
			"C:a1 FETCH 1 BODY[]\r\n", "S:* 1 FETCH (BODY[] {13}\r\n+ Ready\r\nxx)\r\n", "S:a1 OK\r\n",
			"C:a2 APPEND INBOX {8}\r\n", "S:a2 NO [OVERQUOTA]\r\n", "C:a3 LOGOUT\r\n"}, true},
		{"multi-literal command", []string{
			"C:a LOGIN {3}\r\n", "S:+ \r\n", "C:bob {6}\r\n", "S:+ \r\n", "C:LOGOUT\r\n", "S:a OK\r\n"}, false},
	}
	for _, tt := range tests {
		var tr cmdTracker
		for _, step := range tt.steps {
			data := step[2:]
			for i := 0; i < len(data); i += 7 {
				piece := []byte(data[i:min(i+7, len(data))])
				if step[0] == 'C' {
					tr.scanClient(piece)
				} else {
					tr.scanServer(piece)
				}
			}
		}
		if tr.loggedOut() != tt.logout {
			t.Errorf("%s: logout = %v, want %v", tt.name, tr.loggedOut(), tt.logout)
		}
	}
}

// FuzzLoginPhaseParse runs the scanner's pieces over arbitrary input: none
// may panic, and what parses must be self-consistent. The seed corpus runs
// in every go test.
func FuzzLoginPhaseParse(f *testing.F) {
	for _, s := range []string{
		"a LOGIN bob secret\r\n",
		"a LOGIN {3}\r\nbob {6}\r\nsecret\r\n",
		"a LOGIN {3+}\r\nbob \"x\\\"y\"\r\n",
		"a AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n",
		"a ID (\"name\" {4}\r\nmutt)\r\n",
		"i ID (\"name\" \"x\" \"x-originating-ip\" \"203.0.113.9\" \"X-Session-Id\" {2}\r\ns1)\r\n",
		"i ID NIL\r\n",
		"a STARTTLS\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
		"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
		"a LOGIN {99999999999}\r\n",
		"a LOGIN ((((((((((x))))))))))\r\n",
		"\xb5[CAPABILITY ",                      // found by this fuzzer: ToUpper changed lengths
		"* OK \xde[CAPABILITY IMAP4rev1 ID] hi", // the same, in a greeting
		"* OK [CAPABILITY 0STARTTLS]",           // a name that only contains STARTTLS stays
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tag, name, args, err := parseArgs(b)
		if err == nil {
			if tag == "" || name == "" || len(args) > 64 {
				t.Fatalf("parsed %q into tag %q name %q with %d args", b, tag, name, len(args))
			}
			if name == "LOGIN" {
				loginUser(args)
			}
			if pairs, ok := parseIDParams(args); ok {
				out := appendIDCommand(nil, "t", sanitizeID(pairs, 5))
				// What goes upstream must itself parse, and carry no x-* field.
				_, _, again, err := parseArgs(out)
				if err != nil {
					t.Fatalf("sanitized ID %q does not parse: %v", out, err)
				}
				if back, ok := parseIDParams(again); !ok || len(back) > maxIDPairs {
					t.Fatalf("sanitized ID %q: %d pairs, ok %v", out, len(back), ok)
				} else {
					for _, p := range back {
						if isForwardField(p.field) {
							t.Fatalf("client's %q survived in %q", p.field, out)
						}
					}
				}
			}
		}
		trailingLiteral(b)
		for _, mech := range []string{"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"} {
			x := saslExchange{mech: mech}
			x.response(b)
			x.response(b)
		}
		taggedStatus(b, "a")
		checkRewriteCaps(t, b)
		var tr cmdTracker
		tr.scanClient(b)
		tr.scanServer(b)
		tr.scanClient(b)
	})
}

// checkRewriteCaps: after rewriteCaps, no whole capability name STARTTLS or
// LOGINDISABLED is left in the list it found, every other name survives in
// order, and the text around the list is unchanged.
func checkRewriteCaps(t *testing.T, b []byte) {
	t.Helper()
	out, caps := rewriteCaps(nil, b)
	start, end := capRange(b)
	if start < 0 {
		if !bytes.Equal(out, b) || caps != nil {
			t.Fatalf("rewriteCaps changed %q without a capability list: %q", b, out)
		}
		return
	}
	var want [][]byte
	for _, c := range bytes.Fields(b[start:end]) {
		if !isDropped(c) {
			want = append(want, c)
		}
	}
	got := out[start : len(out)-(len(b)-end)]
	if !bytes.Equal(out[:start], b[:start]) || !bytes.Equal(out[len(out)-(len(b)-end):], b[end:]) {
		t.Fatalf("rewriteCaps(%q) changed text outside the list: %q", b, out)
	}
	if !bytes.Equal(got, bytes.Join(want, []byte(" "))) {
		t.Fatalf("rewriteCaps(%q) list = %q, want %q", b, got, bytes.Join(want, []byte(" ")))
	}
	if len(caps) != len(want) {
		t.Fatalf("rewriteCaps(%q) reported %d capabilities, want %d", b, len(caps), len(want))
	}
}

func TestRecordFrame(t *testing.T) {
	rec := func(n int) []byte { return append([]byte{0x16, 3, 1, byte(n >> 8), byte(n)}, make([]byte, n)...) }
	for _, tt := range []struct {
		name   string
		chunks [][]byte
		want   []bool
	}{
		{"whole", [][]byte{rec(300)}, []bool{true}},
		{"half then rest", [][]byte{rec(300)[:100], rec(300)[100:]}, []bool{false, true}},
		{"header split", [][]byte{rec(10)[:3], rec(10)[3:]}, []bool{false, true}},
		{"two records, second cut", [][]byte{append(rec(5), rec(40)[:20]...), rec(40)[20:]}, []bool{true, true}},
		{"empty record", [][]byte{rec(0)}, []bool{true}},
	} {
		var f recordFrame
		for i, c := range tt.chunks {
			if got := f.feed(c); got != tt.want[i] {
				t.Errorf("%s: chunk %d completed = %v, want %v", tt.name, i, got, tt.want[i])
			}
		}
	}
}
